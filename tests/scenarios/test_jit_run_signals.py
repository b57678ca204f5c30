"""`jit run` as a CI runner drives it, with real processes: the `token` backend's credential in the
command's environment (and never the pipeline's own token), SIGTERM from the runner forwarded to
the command, a grant that expires while the command runs stopping it, and the expiry warning."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis as redislib
from fakes.slack import block_action
from procs import Stack, wait_until
from support import ROOT, WEB_TOKEN

from bot.store import keys

CLIENT = ROOT / "client" / "jit_client.py"


@pytest.fixture(scope="module")
def stack():
    with Stack(extra_env={"JIT_RATE_LIMIT": "0"}) as s:
        s.serve()
        s.worker()
        yield s


def start(stack: Stack, argv: list[str], tmp: Path) -> tuple[subprocess.Popen, Path, Path, set[str]]:
    r = redislib.Redis.from_url(stack.redis.url, decode_responses=True)
    before = set(r.zrange("jit:idx:all", 0, -1))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("JIT_")},
        "JIT_URL": stack.url,
        "JIT_TOKEN": WEB_TOKEN,
        "JIT_IDEMPOTENCY_KEY": f"run-{secrets.token_hex(8)}",
    }
    out, err = tmp / "out.log", tmp / "err.log"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = subprocess.Popen([sys.executable, str(CLIENT), "run", *argv], env=env, stdout=o, stderr=e)
    return proc, out, err, before


def approve(stack: Stack, before: set[str], approver: str = "U0LEAD1") -> str:
    r = redislib.Redis.from_url(stack.redis.url, decode_responses=True)
    rid = wait_until(lambda: next(iter(set(r.zrange("jit:idx:all", 0, -1)) - before), None), timeout=60)
    ts = stack.message_ts(rid, timeout=60)
    stack.slack_post(block_action("jit_approve", rid, approver, channel="C0APPROVALS", message_ts=ts))
    return rid


LOOP = r"""
import os, signal, sys, time
def stop(signum, frame):
    print(f"got signal {signum}", flush=True)
    sys.exit(128 + signum)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
token = os.environ.get("JIT_TOKEN", "")
print("issued token parts:", len(token.split(".")), flush=True)
print("token:", token, flush=True)
print("started", flush=True)
while True:
    time.sleep(0.1)
"""


def test_a_runners_sigterm_reaches_the_command_and_the_grant_is_released(stack, tmp_path):
    argv = ["read-secret", "--reason", "cancel me", "--", sys.executable, "-c", LOOP]
    proc, out, err, before = start(stack, argv, tmp_path)
    rid = approve(stack, before)
    wait_until(lambda: "started" in out.read_text(), timeout=60, message="the command running")
    text = out.read_text()
    assert "issued token parts: 3" in text  # the token backend's JWT, not the pipeline's token
    assert "token: ***" in text and WEB_TOKEN not in text
    proc.send_signal(signal.SIGTERM)  # how a CI runner cancels the step
    assert proc.wait(60) == 128 + signal.SIGTERM
    assert f"got signal {int(signal.SIGTERM)}" in out.read_text()
    r = redislib.Redis.from_url(stack.redis.url, decode_responses=True)
    assert r.hget(keys.request(rid), "status") == "revoked"
    assert r.hget(keys.request(rid), "revoked_by") == "pipeline:web-ci"
    wait_until(lambda: r.exists(keys.session(rid)), message="the session record")
    ended = wait_until(
        lambda: next((e for e in stack_audit(stack, rid) if e.get("event") == "session.ended"), None),
        message="session.ended",
    )
    assert ended["details"]["ended_by"] == "interrupt"


def stack_audit(stack: Stack, rid: str) -> list[dict]:
    from bot.store.audit import AuditLog

    log = AuditLog(redislib.Redis.from_url(stack.redis.url, decode_responses=True))
    return [e.body for e in log.entries_for_request(rid)]


def test_a_grant_that_expires_stops_the_command(stack, tmp_path):
    argv = ["quick", "--reason", "too long", "--ttl", "3s", "--grace", "30s", "--", sys.executable, "-c", LOOP]
    proc, out, err, before = start(stack, argv, tmp_path)
    approve(stack, before)
    assert proc.wait(90) == 128 + signal.SIGTERM
    assert f"got signal {int(signal.SIGTERM)}" in out.read_text()
    log = err.read_text()
    assert "the grant expired" in log and "stopping the command" in log


def test_no_kill_on_expiry_lets_the_command_finish(stack, tmp_path):
    script = "import time, os; time.sleep(12); print('finished', flush=True)"
    argv = ["quick", "--reason", "let me finish", "--ttl", "2s", "--no-kill-on-expiry", "--"]
    argv += [sys.executable, "-c", script]
    proc, out, err, before = start(stack, argv, tmp_path)
    approve(stack, before)
    assert proc.wait(90) == 0
    assert "finished" in out.read_text()
    assert "keeps running (--no-kill-on-expiry)" in err.read_text()
