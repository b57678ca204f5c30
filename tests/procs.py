"""Real processes for end-to-end and fault tests: redis-server, `jit serve`, `jit worker`.

A `Stack` owns a throwaway Redis, a Slack fake, a policy file and the jit processes it starts,
each in its own session so a test can SIGKILL one whole process tree.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from fakes.slack import SlackFake, sign
from support import BOT_TOKEN, SECRET_KEY, SIGNING_SECRET, RedisServer, free_port, policy_text

JIT = [sys.executable, "-m", "bot.cli"]


class Proc:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}-{int(time.time() * 1000)}.log"
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(
            argv,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=str(Path(__file__).resolve().parent.parent),
        )

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL the whole process tree: no cleanup, no graceful anything."""
        self.signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 30) -> int | None:
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        finally:
            self._log.close()

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")


class Stack:
    """Redis + Slack fake + policy + any number of `jit serve` / `jit worker` processes."""

    def __init__(
        self,
        *,
        appendonly: bool = False,
        extra_env: dict[str, str] | None = None,
        policy: str | None = None,
        redis: RedisServer | None = None,
    ) -> None:
        self.request_tokens: dict[tuple[str, str], str] = {}
        self.tmp = Path(tempfile.mkdtemp(prefix="jit-stack-"))
        self.state_dir = self.tmp / "grants"
        self.state_dir.mkdir()
        self.redis = redis or RedisServer(appendonly=appendonly).start()
        self._own_redis = redis is None
        self.slack = SlackFake(
            token=BOT_TOKEN,
            usergroups={"S0PRODLEADS": ["U0LEAD3", "U0LEAD4"], "S0SECURITY": ["U0AUDITOR"]},
        ).start()
        self.policy_file = self.tmp / "jit-policy.yaml"
        self.policy_file.write_text(policy or policy_text(str(self.state_dir)))
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("JIT_", "SLACK_", "REDIS_"))},
            "REDIS_URL": self.redis.url,
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_API_URL": self.slack.api_url,
            "JIT_POLICY_FILE": str(self.policy_file),
            "JIT_SECRET_KEY": SECRET_KEY,
            "JIT_PUBLIC_URL": "http://127.0.0.1",
            "JIT_TEST_STATE": str(self.state_dir),
            "JIT_GRANT_MAX_ATTEMPTS": "3",
            "PYTHONUNBUFFERED": "1",
            **(extra_env or {}),
        }
        self.procs: list[Proc] = []
        self.port: int | None = None

    # ------------------------------------------------------------------ processes

    def serve(self, port: int | None = None, workers: int = 1) -> Proc:
        self.port = port or self.port or free_port()
        p = Proc("serve", [*JIT, "serve", "--port", str(self.port), "--workers", str(workers)], self.env, self.tmp)
        self.procs.append(p)
        self.wait_ready(p)
        return p

    def worker(self, concurrency: int = 2, extra: list[str] | None = None) -> Proc:
        p = Proc("worker", [*JIT, "worker", "--concurrency", str(concurrency), *(extra or [])], self.env, self.tmp)
        self.procs.append(p)
        return p

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, proc: Proc, timeout: float = 30) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not proc.alive:
                raise AssertionError(f"{proc.name} exited:\n{proc.log()}")
            try:
                if requests.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{proc.name} not ready:\n{proc.log()}")

    def close(self) -> None:
        for p in self.procs:
            if p.alive:
                p.stop(10)
        self.slack.stop()
        if self._own_redis:
            self.redis.cleanup()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ product use

    def ask(self, action: str, token: str, **body: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"}
        headers.update(body.pop("headers", {}))
        resp = requests.post(
            self.url + "/v1/requests",
            json={"action": action, "reason": body.pop("reason", "release"), **body},
            headers=headers,
            timeout=10,
        )
        if resp.status_code in (200, 201):
            self.request_tokens[(resp.json()["id"], token)] = resp.json()["request_token"]
        return resp

    def follow_token(self, rid: str, token: str) -> str:
        """A pipeline follows its request up with the request_token it got when it asked (the
        pipeline token alone no longer reads a request); any other token is sent as it is."""
        return self.request_tokens.get((rid, token), token)

    def get(self, rid: str, token: str, wait: float | None = None, path: str = "") -> requests.Response:
        q = f"?wait={wait}" if wait is not None else ""
        bearer = self.follow_token(rid, token)
        return requests.get(
            f"{self.url}/v1/requests/{rid}{path}{q}",
            headers={"Authorization": f"Bearer {bearer}"},
            timeout=(wait or 0) + 15,
        )

    def slack_post(self, built: tuple[bytes, str]) -> requests.Response:
        body, ctype = built
        return requests.post(
            self.url + "/slack/events", data=body, headers=sign(SIGNING_SECRET, body, content_type=ctype), timeout=10
        )

    def wait_status(self, rid: str, token: str, statuses: set[str], timeout: float = 30) -> dict:
        deadline = time.time() + timeout
        body: dict = {}
        while time.time() < deadline:
            try:
                r = self.get(rid, token, wait=min(5, max(deadline - time.time(), 0.1)))
                if r.status_code == 200:
                    body = r.json()
                    if body["status"] in statuses:
                        return body
            except requests.RequestException:
                time.sleep(0.2)
        raise AssertionError(f"{rid} never reached {statuses}; last: {body}")

    def message_ts(self, rid: str, timeout: float = 20) -> str:
        import redis as redislib

        r = redislib.Redis.from_url(self.redis.url, decode_responses=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            ts = r.hget(f"jit:req:{rid}", "message_ts")
            if ts:
                return ts
            time.sleep(0.05)
        raise AssertionError(f"no Slack message for {rid}")


def wait_until(predicate, timeout: float = 30, interval: float = 0.05, message: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {message}")


__all__ = ["Stack", "Proc", "wait_until", "free_port"]
