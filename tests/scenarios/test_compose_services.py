"""What `docker compose up` runs, run directly: from `jit init` to a credential, on this machine.

There is no Docker engine here (nor a registry to pull images from), so the containers are not
started; their processes are. Each service's `command` from docker-compose.yml runs through the
installed `jit` script with the environment compose would give it: the `.env` `jit init` wrote,
overridden by the service's `environment:`, the policy read from the bind mount's source.
Three things differ, each because a container has its own network: the `redis` service's host
is a local redis-server, the published port is a free one, and Slack's API is the tests' Slack
fake (a container would call slack.com). `docker compose config` and hadolint: test_container_files.py.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests
import yaml
from dotenv import dotenv_values
from fakes.slack import SlackFake, block_action, sign
from support import ROOT, free_port

from bot.settings import Settings

JIT = Path(sys.executable).with_name("jit")  # the console script the image runs
NAMES = tuple(f.alias for f in Settings.model_fields.values())
SESSION = {"start_new_session": True}  # each replica's process tree, signalled as one


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                out.append(int(entry))
    return out


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def seconds(duration: str) -> float:
    m = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    return int(m.group(1) or 0) * 60 + int(m.group(2) or 0)


class Service:
    """One compose service's processes (its replicas), started as compose would start them."""

    def __init__(self, name: str, spec: dict, project: Path, env: dict[str, str], port: int) -> None:
        self.name, self.spec = name, spec
        cmd = list(spec["command"])
        assert cmd[0] == "jit"
        if "--port" in cmd:  # the published port is a free one here
            cmd[cmd.index("--port") + 1] = str(port)
        self.argv = [str(JIT), *cmd[1:]]
        workdir = project / f"workdir-{name}"  # the image's WORKDIR holds no .env
        workdir.mkdir()
        replicas = spec.get("deploy", {}).get("replicas", 1)
        self.logs = [project / f"{name}-{i}.log" for i in range(replicas)]
        self._files = [log.open("wb") for log in self.logs]
        self.procs = [
            subprocess.Popen(self.argv, env=env, cwd=workdir, stdout=f, stderr=subprocess.STDOUT, **SESSION)
            for f in self._files
        ]

    def log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in self.logs)

    def stop(self, grace: float) -> list[int | None]:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        codes = []
        for p in self.procs:
            try:
                codes.append(p.wait(grace))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(10)
                codes.append(None)
        for f in self._files:
            f.close()
        return codes


def container_env(spec: dict, project: Path, redis_url: str, slack_api: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in NAMES}
    assert spec["env_file"] == ".env"
    env.update(dotenv_values(project / ".env"))  # env_file, then `environment:` wins
    env.update({k: str(v) for k, v in spec["environment"].items()})
    assert env["REDIS_URL"] == "redis://redis:6379/0"  # the redis service, on the compose network
    env["REDIS_URL"] = redis_url
    for mount in spec["volumes"]:  # the policy path inside the container → its bind source
        source, target = (mount.split(":")[:2]) if isinstance(mount, str) else (mount["source"], mount["target"])
        if env["JIT_POLICY_FILE"] == target:
            env["JIT_POLICY_FILE"] = str((project / source).resolve())
    assert Path(env["JIT_POLICY_FILE"]).is_file(), "the policy must come from a bind-mounted file"
    env["SLACK_API_URL"] = slack_api
    return env


def test_compose_services_from_jit_init_to_a_credential(tmp_path, redis_url):
    project = tmp_path / "clone"
    project.mkdir()
    clean = {k: v for k, v in os.environ.items() if k not in NAMES}
    init = subprocess.run(
        [str(JIT), "init", "--dir", str(project)], env=clean, capture_output=True, text=True, timeout=60, check=False
    )
    assert init.returncode == 0, init.stderr
    pipeline_token = re.search(r"^  (jit_\S+)$", init.stdout, flags=re.M).group(1)
    with (project / ".env").open("a") as f:
        f.write("JIT_WEB_WORKERS=3\n")  # a user tunes the server in .env, not in docker-compose.yml
    dotenv = dotenv_values(project / ".env")

    services = compose()["services"]
    port = free_port()
    with SlackFake(token=dotenv["SLACK_BOT_TOKEN"], usergroups={"S0LEADS": ["U0BOB"]}) as slack:
        started: list[Service] = []
        try:
            for name in ("bot", "worker"):
                spec = services[name]
                env = container_env(spec, project, redis_url, slack.api_url)
                started.append(Service(name, spec, project, env, port))
            bot, worker = started
            url = f"http://127.0.0.1:{port}"

            # the bot's healthcheck, as Docker runs it inside the container
            check = services["bot"]["healthcheck"]["test"]
            assert check[:3] == ["CMD", "python", "-c"]
            probe = [sys.executable, "-c", check[3].replace(":3000/", f":{port}/")]

            def healthy() -> bool:
                assert all(p.poll() is None for s in started for p in s.procs), bot.log() + worker.log()
                return subprocess.run(probe, capture_output=True, timeout=30, check=False).returncode == 0

            wait_for(healthy, 90, "the bot's healthcheck to pass")

            # JIT_WEB_WORKERS from .env: gunicorn's master runs that many workers
            master = bot.procs[0].pid
            wait_for(lambda: len(children(master)) == 3, 60, f"3 gunicorn workers, have {children(master)}")
            # two worker replicas, each with JIT_WORKER_CONCURRENCY (default 2) processes
            for p in worker.procs:
                wait_for(lambda p=p: len(children(p.pid)) == 1, 60, "each jit worker's second process")

            # a pipeline asks with the token jit init printed…
            created = requests.post(
                f"{url}/v1/requests",
                json={"action": "read-secret", "reason": "compose smoke"},
                headers={"Authorization": f"Bearer {pipeline_token}"},
                timeout=10,
            )
            assert created.status_code == 201, created.text
            rid, rtok = created.json()["id"], created.json()["request_token"]
            follow = {"Authorization": f"Bearer {rtok}"}

            # …a worker posts the approval message with the .env's bot token…
            posted = slack.wait_for(
                lambda c: c.method == "chat.postMessage" and c.ok and rid in str(c.params.get("blocks")), timeout=60
            )
            assert posted.headers.get("Authorization") == f"Bearer {dotenv['SLACK_BOT_TOKEN']}"

            # …the two approvers the starter policy names (alice, and bob through @leads) click,
            # signed with the .env's secret…
            for approver in ("U0ALICE", "U0BOB"):
                body, ctype = block_action(
                    "jit_approve", rid, approver, channel=posted.params["channel"], message_ts=posted.response["ts"]
                )
                click = requests.post(
                    f"{url}/slack/events",
                    data=body,
                    headers=sign(dotenv["SLACK_SIGNING_SECRET"], body, content_type=ctype),
                    timeout=10,
                )
                assert click.status_code == 200, click.text

            # …and the pipeline collects its credential.
            def active():
                r = requests.get(f"{url}/v1/requests/{rid}?wait=5", headers=follow, timeout=20)
                return r.json()["status"] == "active"

            wait_for(active, 60, "the request to become active")
            cred = requests.get(f"{url}/v1/requests/{rid}/credential", headers=follow, timeout=10)
            assert cred.status_code == 200 and cred.json()["credential"]

            # /metrics on the published port answers the .env's metrics token only
            assert requests.get(f"{url}/metrics", timeout=10).status_code == 401
            scrape = requests.get(
                f"{url}/metrics", headers={"Authorization": f"Bearer {dotenv['JIT_METRICS_TOKEN']}"}, timeout=10
            )
            assert scrape.status_code == 200 and "jit_requests_total" in scrape.text
        finally:
            codes = {s.name: s.stop(seconds(s.spec["stop_grace_period"])) for s in started}
        # SIGTERM (`docker compose stop`) ends every process cleanly within the grace period
        assert codes == {"bot": [0], "worker": [0, 0]}, codes
