"""Fault 3: two workers, each with its own scheduler loop, race over many short grants; each grant is
revoked, and the audit shows one revocation per request."""

from __future__ import annotations

from collections import Counter

from faultkit import approve, ask, audit, audit_verifies, due, grant_log, rdb, wait_status
from procs import Stack

N = 16


def test_two_workers_with_schedulers_revoke_every_grant_once():
    # Slack pacing (one post a second per channel) is not under test here: posts go out at once.
    with Stack(extra_env={"JIT_SLACK_POST_INTERVAL_MS": "0"}) as stack:
        stack.serve()
        workers = [stack.worker(concurrency=2), stack.worker(concurrency=2)]
        reqs = [ask(stack, "quick", ttl="2s", reason=f"fault 3 #{i}")[0] for i in range(N)]
        for rid in reqs:
            stack.message_ts(rid)
        for rid in reqs:
            approve(stack, rid)
        for rid in reqs:
            wait_status(stack, rid, {"expired"}, timeout=60)

        revoked = Counter(e["request_id"] for e in audit(stack, "grant.revoked"))
        issued = Counter(e["request_id"] for e in audit(stack, "grant.issued"))
        for rid in reqs:
            assert revoked[rid] == 1, f"{rid}: {revoked[rid]} grant.revoked events"
            assert issued[rid] == 1, f"{rid}: {issued[rid]} grant.issued events"
            assert len(grant_log(stack, rid)) == 1
            assert 1 <= len(grant_log(stack, rid, "revoke")) <= 2  # an idempotent revoke may run twice
            assert rdb(stack).hget(f"jit:req:{rid}", "revoke_done_ms")
            assert not rdb(stack).exists(f"jit:cred:{rid}")
        assert not [m for m in due(stack) if m.split(":")[0] in ("grant", "expire", "revoke")]
        assert all(w.alive for w in workers)
        audit_verifies(stack)
