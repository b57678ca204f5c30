"""Fault 1: a worker SIGKILLed in the middle of a grant; a new worker finishes it, with one credential."""

from __future__ import annotations

import sys
from pathlib import Path

from faultkit import (
    approve,
    ask,
    audit,
    audit_verifies,
    due,
    flag,
    grant_commands_running,
    grant_log,
    policy_with,
    rdb,
    unflag,
    wait_status,
)
from procs import Stack, wait_until
from support import GRANT_SCRIPT

HANG_SCRIPT = str(Path(__file__).with_name("grant_then_hang.py"))

# `hang`: its grant command creates the identity, then hangs before answering (flag `hang-after-grant`).
HANG_ACTION = f"""\
  hang:
    description: Grant that hangs after creating the identity
    approvers: [U0LEAD1]
    ttl: {{default: 1m, max: 1m}}
    grant:
      type: exec
      grant_command: ["{sys.executable}", "{HANG_SCRIPT}"]
      revoke_command: ["{sys.executable}", "{GRANT_SCRIPT}", "revoke"]
      env_passthrough: [JIT_TEST_STATE]
"""


def test_worker_killed_mid_grant_ends_active_with_one_credential():
    with Stack() as stack:
        stack.policy_file.write_text(policy_with(str(stack.state_dir), HANG_ACTION, ["hang"]))
        stack.serve()
        worker = stack.worker(concurrency=2)

        # A: killed while its grant command runs (nothing created yet).
        # B: killed after the target created the identity, before jit recorded the credential.
        flag(stack, "slow-grant", "60")
        flag(stack, "hang-after-grant", "60")
        a, a_token = ask(stack, "quick", ttl="1m", reason="fault 1: before the identity exists")
        b, b_token = ask(stack, "hang", reason="fault 1: after the identity exists")
        for rid in (a, b):
            stack.message_ts(rid)
            approve(stack, rid)
        wait_until(lambda: grant_commands_running(stack, "grant.py"), 30, message="A's grant command running")
        wait_until(lambda: len(grant_log(stack, b)) == 1, 30, message="B's identity created")

        worker.kill()
        # The grant command died with the worker's process group: nothing half-done keeps running.
        wait_until(lambda: not grant_commands_running(stack, "grant.py"), 10, message="A's grant command gone")
        assert grant_log(stack, a) == []
        assert {"grant:" + a, "grant:" + b} <= set(due(stack)), "the grants must stay on the due queue"
        for rid in (a, b):
            assert rdb(stack).hget(f"jit:req:{rid}", "status") == "approved"

        unflag(stack, "slow-grant")
        unflag(stack, "hang-after-grant")
        stack.worker(concurrency=2)
        # The lease of a job lost with its worker is 10 s; then the grant runs again.
        for rid, token in ((a, a_token), (b, b_token)):
            wait_status(stack, rid, {"active", "failed"}, timeout=45)
            assert stack.wait_status(rid, token, {"active"}, timeout=5)["status"] == "active"
            cred = stack.get(rid, token, path="/credential")
            assert cred.status_code == 200, cred.text
            credential = cred.json()["credential"]
            assert credential["username"] == f"deploy-{rid[:8]}"
            assert rdb(stack).exists(f"jit:cred:{rid}") == 1
            assert len(audit(stack, "grant.issued", rid)) == 1
            assert not any(m.startswith("grant:") and m.endswith(rid) for m in due(stack))

        # A: the identity was created exactly once (by the new worker).
        assert [r["request"]["id"] for r in grant_log(stack, a)] == [a]
        # B: granted again idempotently: one identity, and the credential jit holds is the latest one.
        records = grant_log(stack, b)
        assert len(records) == 2 and {r["username"] for r in records} == {f"deploy-{b[:8]}"}
        cred_b = stack.get(b, b_token, path="/credential").json()["credential"]
        assert cred_b["password"] == records[-1]["password"]
        audit_verifies(stack)
