"""Fault: a worker is killed half-way through a batch of expiries; the next worker revokes every one
of them (at least once), each expiry is recorded exactly once, and every Slack message ends up
saying so."""

from __future__ import annotations

import time

from faultkit import (
    approve,
    ask,
    audit,
    audit_verifies,
    delivered_statuses,
    due,
    flag,
    grant_commands_running,
    grant_log,
    rdb,
    unflag,
    wait_status,
)
from procs import Stack, wait_until

GRANTS = 6


def test_a_worker_killed_mid_batch_loses_no_revocation():
    with Stack() as stack:
        stack.serve()
        worker = stack.worker()
        reqs = [ask(stack, "quick", ttl="10s", reason=f"batch #{i}") for i in range(GRANTS)]
        for rid, _ in reqs:
            stack.message_ts(rid)
            approve(stack, rid)
        for rid, _ in reqs:
            wait_status(stack, rid, {"active"})

        # Every expiry passes while no worker runs, so the next one finds them all due at once and
        # claims them together: they run in batches (two expiries a job here).
        worker.kill()
        expires = [int(rdb(stack).hget(f"jit:req:{rid}", "expires_ms")) for rid, _ in reqs]
        wait_until(lambda: time.time() * 1000 > max(expires) + 1000, 30, 0.2, "expiry passes")

        flag(stack, "slow-revoke", "120")  # each batch's first backend revoke hangs...
        worker = stack.worker()
        wait_until(lambda: grant_commands_running(stack, "revoke"), 30, 0.1, "a revoke under way")
        worker.kill()  # ...and the worker dies in the middle of its batches
        unflag(stack, "slow-revoke")
        assert any(status != "expired" for status in (rdb(stack).hget(f"jit:req:{rid}", "status") for rid, _ in reqs))

        stack.worker()
        for rid, _ in reqs:
            wait_status(stack, rid, {"expired"}, timeout=60)
        for rid, token in reqs:
            assert grant_log(stack, rid, "revoke"), f"{rid} was never revoked at the backend"
            [event] = audit(stack, "grant.revoked", rid)  # recorded once, however often it ran
            assert event["actor"] == "expiry" and event["details"]["status"] == "expired"
            assert event["details"]["lateness_ms"] >= 0  # never early
            assert stack.get(rid, token).json()["status"] == "expired"
            assert not rdb(stack).exists(f"jit:cred:{rid}")
        assert not any(m.startswith("expire:") for m in due(stack))
        # The messages catch up after the revocations, paced: each ends up showing the expiry.
        for rid, _ in reqs:
            wait_until(
                lambda rid=rid: (delivered_statuses(stack, rid) or [""])[-1].startswith("expired"),
                60,
                0.2,
                f"{rid}'s message to show the expiry",
            )
        wait_until(lambda: not rdb(stack).exists("jit:slack:expired"), 30, 0.2, "no message left to update")
        audit_verifies(stack)
