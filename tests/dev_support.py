"""`jit dev` as a real process tree in a folder of its own, for the tests (and docs/screenshots.py)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import requests
from procs import wait_until
from support import ROOT, free_port

JIT = [sys.executable, "-m", "bot.cli"]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JIT_", "SLACK_", "REDIS_"))}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Dev:
    """A `jit dev` process tree in a folder of its own."""

    def __init__(self, folder: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.port = free_port()
        self.out = folder / "dev.out"
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                [*JIT, "dev", "--port", str(self.port), *args],
                cwd=folder,
                env=env or clean_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.url = f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.out.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            assert self.proc.poll() is None, self.output()
            try:
                return requests.get(self.url + "/readyz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(
            ready,
            timeout=timeout,
            interval=0.1,
            message=f"jit dev to serve /readyz\n{self.output()}",
        )

    def wait_banner(self, timeout: float = 30) -> str:
        """The start-up banner has been printed; the whole output so far."""
        wait_until(lambda: "Ctrl-C stops everything" in self.output(), timeout=timeout, message="the banner")
        return self.output()

    def sandbox_url(self) -> str:
        """The Slack sandbox's page, as the banner names it."""
        found = re.search(r"open (http://127\.0\.0\.1:\d+)", self.wait_banner())
        assert found, self.output()
        return found.group(1)

    def pipeline_token(self) -> str:
        return (self.folder / ".jit" / "pipeline-token").read_text().strip()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            raise

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# ------------------------------------------------------------------ what the sandbox page does


def page_token(sandbox_url: str) -> str:
    html = requests.get(sandbox_url + "/", timeout=10).text
    return re.search(r'name="jit-sandbox-token" content="([^"]+)"', html).group(1)


def sandbox_messages(sandbox_url: str, user: str = "U0ALICE") -> list[dict]:
    state = requests.get(
        f"{sandbox_url}/ui/state?user={user}", headers={"X-Sandbox-Token": page_token(sandbox_url)}, timeout=30
    )
    return state.json()["messages"]


def request_waiting(sandbox_url: str, exclude: str) -> str | None:
    """The id of a pending request whose message is in the sandbox, other than `exclude`."""
    for m in sandbox_messages(sandbox_url):
        for block in m.get("blocks") or []:
            if block.get("type") == "actions" and block.get("block_id", "").startswith("decide:"):
                rid = block["block_id"].split(":", 1)[1]
                if rid != exclude:
                    return rid
    return None


def click(sandbox_url: str, user: str, rid: str, label: str) -> None:
    """What the page sends when `user` clicks `label` on the request's message."""
    for m in sandbox_messages(sandbox_url, user):
        for i, block in enumerate(m.get("blocks") or []):
            for j, element in enumerate(block.get("elements") or []):
                if element.get("value") == rid and element["text"]["text"] == label:
                    r = requests.post(
                        sandbox_url + "/ui/click",
                        json={"user": user, "where": {"kind": "message", "ts": m["ts"]}, "block": i, "element": j},
                        headers={"X-Sandbox-Token": page_token(sandbox_url)},
                        timeout=30,
                    )
                    assert r.status_code == 200, r.text
                    return
    raise AssertionError(f"no {label} button for {rid}")
