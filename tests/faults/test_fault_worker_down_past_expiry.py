"""Fault 2: no worker runs when grants expire; a worker coming back revokes them at once, and the audit
records how late."""

from __future__ import annotations

import time

from faultkit import (
    FEW_SECONDS,
    approve,
    ask,
    audit,
    audit_verifies,
    due,
    grant_log,
    rdb,
    wait_status,
)
from procs import Stack, wait_until


def test_grants_expired_while_no_worker_runs_are_revoked_when_one_returns():
    with Stack() as stack:
        stack.serve()
        worker = stack.worker()
        # TTL long enough that all three are active before the worker is killed, even on a loaded machine
        reqs = [ask(stack, "quick", ttl="10s", reason=f"fault 2 #{i}") for i in range(3)]
        for rid, _ in reqs:
            stack.message_ts(rid)
            approve(stack, rid)
        for rid, _ in reqs:
            wait_status(stack, rid, {"active"})

        worker.kill()
        expires = {rid: int(rdb(stack).hget(f"jit:req:{rid}", "expires_ms")) for rid, _ in reqs}
        # Down well past every expiry.
        wait_until(lambda: time.time() * 1000 > max(expires.values()) + 4000, 30, 0.2, "expiry passes")
        for rid, token in reqs:
            assert rdb(stack).hget(f"jit:req:{rid}", "status") == "active"  # nobody revoked it yet...
            assert f"expire:{rid}" in due(stack)  # ...but the revocation is still owed
            assert grant_log(stack, rid, "revoke") == []
            # and the pipeline can no longer fetch it: expiry is enforced at the edge too
            assert stack.get(rid, token, path="/credential").status_code == 410

        back = time.time()
        stack.worker()
        for rid, _ in reqs:
            wait_status(stack, rid, {"expired"}, timeout=30)
        for rid, token in reqs:
            revokes = grant_log(stack, rid, "revoke")
            assert len(revokes) == 1
            assert revokes[0]["at"] - back <= FEW_SECONDS, "revoked within a few seconds of the worker's return"
            [event] = audit(stack, "grant.revoked", rid)
            lateness = event["details"]["lateness_ms"]
            # The audit records the lateness: at least the time the worker was away past expiry.
            assert lateness >= back * 1000 - expires[rid] - 50, (lateness, back * 1000 - expires[rid])
            assert abs(expires[rid] + lateness - revokes[0]["at"] * 1000) < 5000
            assert event["details"]["status"] == "expired" and event["actor"] == "expiry"
            assert stack.get(rid, token).json()["status"] == "expired"
            assert not rdb(stack).exists(f"jit:cred:{rid}")
        assert not any(m.startswith("expire:") for m in due(stack))
        audit_verifies(stack)
