"""Helpers for the fault tests: read what a Stack's Redis, audit trail, Slack fake and grant log hold."""

from __future__ import annotations

import json
import time
from typing import Any

import redis as redislib
from fakes.slack import block_action
from procs import Stack, wait_until
from support import ROOT, SECRET_KEY, SIGNING_SECRET, WEB_TOKEN, RedisServer, policy_text

#: Deadline for "within a few seconds" promises, generous for a loaded 2-core machine.
FEW_SECONDS = 15.0


def shipped_redis_flags() -> list[str]:
    """The redis-server flags docker-compose.yml ships (persistence, eviction)."""
    import yaml

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    command = compose["services"]["redis"]["command"]
    argv = command.split() if isinstance(command, str) else [str(a) for a in command]
    return argv[1:] if argv and argv[0] == "redis-server" else argv


class ShippedRedis(RedisServer):
    """A throwaway redis-server started with the flags docker-compose.yml ships; `start()` again
    after `kill()`/`stop()` restarts it on the same port and directory (its AOF)."""

    def __init__(self) -> None:
        super().__init__(appendonly=True)
        self.flags = shipped_redis_flags()

    def start(self) -> ShippedRedis:
        import os
        import subprocess

        args = [
            self.binary,
            *self.flags,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            self.dir,
            "--daemonize",
            "no",
            "--logfile",
            os.path.join(self.dir, "redis.log"),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redislib.Redis(port=self.port)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                client.ping()
                return self
            except (redislib.ConnectionError, redislib.exceptions.BusyLoadingError):
                if self.proc.poll() is not None:
                    log = open(os.path.join(self.dir, "redis.log")).read()
                    raise RuntimeError(f"redis-server exited: {log}") from None
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")


def rdb(stack: Stack) -> redislib.Redis:
    return redislib.Redis.from_url(stack.redis.url, decode_responses=True, socket_timeout=5)


def ask(stack: Stack, action: str = "quick", **body: Any) -> tuple[str, str]:
    """A pipeline asks; returns (request id, request token)."""
    r = stack.ask(action, WEB_TOKEN, **body)
    assert r.status_code == 201, r.text
    created = r.json()
    return created["id"], created["request_token"]


def request_hash(stack: Stack, rid: str) -> dict[str, str]:
    return rdb(stack).hgetall(f"jit:req:{rid}")


def status(stack: Stack, rid: str) -> str | None:
    return rdb(stack).hget(f"jit:req:{rid}", "status")


def wait_status(stack: Stack, rid: str, statuses: set[str], timeout: float = 30) -> dict[str, str]:
    """Poll the store directly (works with the server down)."""
    wait_until(
        lambda: status(stack, rid) in statuses, timeout, 0.05, f"{rid} to reach {statuses} (now {status(stack, rid)})"
    )
    return request_hash(stack, rid)


def click(stack: Stack, action_id: str, rid: str, user: str) -> None:
    """An approver clicks a button on the request's message (or a stand-in when none was posted)."""
    h = request_hash(stack, rid)
    ts = h.get("message_ts") or f"{time.time():.6f}"
    channel = h.get("message_channel") or h.get("channel") or "C0APPROVALS"
    resp = stack.slack_post(block_action(action_id, rid, user, channel=channel, message_ts=ts))
    assert resp.status_code == 200, resp.text


def approve(stack: Stack, rid: str, user: str = "U0LEAD1") -> None:
    click(stack, "jit_approve", rid, user)


def grant_log(stack: Stack, rid: str, mode: str = "grant") -> list[dict[str, Any]]:
    """What tests/fixtures/grant.py recorded for this request (one line per identity created/revoked)."""
    p = stack.state_dir / f"{rid}.{mode}"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def flag(stack: Stack, name: str, content: str = "") -> None:
    """Create a fault flag for grant.py (`fail-grant`, `fail-revoke`, `slow-grant`)."""
    (stack.state_dir / name).write_text(content)


def unflag(stack: Stack, name: str) -> None:
    (stack.state_dir / name).unlink(missing_ok=True)


def grant_commands_running(stack: Stack, needle: str) -> list[int]:
    """Pids of grant/revoke commands started for this stack (matched by their JIT_TEST_STATE)."""
    from pathlib import Path

    marker = f"JIT_TEST_STATE={stack.state_dir}".encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes()
            if needle.encode() in cmd and marker in (proc / "environ").read_bytes().split(b"\0"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def audit(stack: Stack, event: str | None = None, rid: str | None = None) -> list[dict[str, Any]]:
    from bot.store.audit import AuditLog

    return [
        e.body
        for e in AuditLog(rdb(stack)).entries()
        if (event is None or e.body["event"] == event) and (rid is None or e.body.get("request_id") == rid)
    ]


def audit_verifies(stack: Stack) -> int:
    from bot.core.crypto import AuditSigner
    from bot.store.audit import AuditLog

    n, broken = AuditLog(rdb(stack), signer=AuditSigner(SECRET_KEY)).verify()
    assert broken is None, broken
    return n


def due(stack: Stack) -> dict[str, float]:
    return dict(rdb(stack).zrange("jit:due", 0, -1, withscores=True))


def request_posts(stack: Stack, rid: str) -> list[dict[str, Any]]:
    """Top-level messages the bot got posted for this request (successful chat.postMessage calls)."""
    return [
        c.response
        for c in stack.slack.calls("chat.postMessage")
        if c.ok and not c.params.get("thread_ts") and str(c.params.get("text", "")).startswith(f"Access request {rid}:")
    ]


def delivered_statuses(stack: Stack, rid: str) -> list[str]:
    """The status each delivered post/update showed for this request, in the order Slack applied them."""
    out = []
    for c in stack.slack.calls():
        if c.method in ("chat.postMessage", "chat.update") and c.ok and not c.params.get("thread_ts"):
            text = str(c.params.get("text", ""))
            if text.startswith(f"Access request {rid}:"):
                out.append(text.rsplit("— ", 1)[-1])
    return out


def settle_slack(stack: Stack, quiet: float = 1.5, timeout: float = 30) -> None:
    """Wait until the bot has made no Slack call for `quiet` seconds (start-up posts are out), so a
    fault injected next hits the call the test means."""
    deadline = time.time() + timeout
    last, since = -1, time.time()
    while time.time() < deadline:
        n = len(stack.slack.calls())
        if n != last:
            last, since = n, time.time()
        elif time.time() - since >= quiet:
            return
        time.sleep(0.1)
    raise AssertionError("Slack traffic never settled")


def thread_notices(stack: Stack, rid: str) -> list[str]:
    ts = request_hash(stack, rid).get("message_ts")
    return [
        str(c.params.get("text", ""))
        for c in stack.slack.calls("chat.postMessage")
        if c.ok and ts and c.params.get("thread_ts") == ts
    ]


#: Lifecycle order, to check that updates never show an older state after a newer one.
ORDER = {
    "pending": 0,
    "approved": 1,
    "active": 2,
    "denied": 3,
    "timed_out": 3,
    "cancelled": 3,
    "failed": 3,
    "revoked": 3,
    "expired": 3,
}


def assert_in_order(statuses: list[str]) -> None:
    ranks = [ORDER[s] for s in statuses]
    assert ranks == sorted(ranks), f"Slack showed states out of order: {statuses}"


def policy_with(stack_state_dir: str, extra_actions: str, extra_pipeline_actions: list[str]) -> str:
    """The test policy plus more actions (appended YAML under `actions:`) allowed to web-ci."""
    text = policy_text(stack_state_dir)
    text = text.replace(
        "actions: [deploy-prod, read-secret, quick]",
        "actions: [" + ", ".join(["deploy-prod", "read-secret", "quick", *extra_pipeline_actions]) + "]",
    )
    return text + extra_actions


__all__ = ["SIGNING_SECRET", "FEW_SECONDS", "Stack", "wait_until"]
