"""The access lane with real processes: a click is granted by `jit worker`'s own threads, and an
entry its reader never ran is granted once, by the due queue, after its lease lapses."""

from __future__ import annotations

import time

import redis as redislib
import requests
from faultkit import approve, ask, audit, audit_verifies, due, rdb, wait_status
from procs import Stack, wait_until
from rq.suspension import resume, suspend

from bot.core.clock import now_ms
from bot.store import keys


def lane(r) -> list[str]:
    return r.lrange(keys.access_lane(), 0, -1)


def test_a_click_is_granted_by_the_worker_itself_even_with_rq_suspended():
    """With RQ's workers suspended (they take no job), a click still ends in a credential: the
    grant ran in the worker's lane, not as an RQ job."""
    with Stack() as stack:
        stack.serve()
        stack.worker(concurrency=2)
        r = rdb(stack)
        wait_until(lambda: r.exists(keys.access_lane_alive()), 30, message="the worker reads the lane")
        rid, token = ask(stack, "quick", reason="lane: granted without RQ")
        stack.message_ts(rid)
        suspend(redislib.Redis.from_url(stack.redis.url))
        try:
            approve(stack, rid)
            assert stack.wait_status(rid, token, {"active", "failed"}, timeout=20)["status"] == "active"
            cred = stack.get(rid, token, path="/credential")
            assert cred.status_code == 200, cred.text
            assert len(audit(stack, "grant.issued", rid)) == 1
            # the pipeline is done: its revoke takes the lane too
            bearer = stack.follow_token(rid, token)
            resp = requests.delete(
                f"{stack.url}/v1/requests/{rid}", headers={"Authorization": f"Bearer {bearer}"}, timeout=10
            )
            assert resp.status_code == 200, resp.text
            wait_status(stack, rid, {"revoked"}, timeout=20)
            wait_until(lambda: not any(m.endswith(rid) and m.startswith(("grant:", "revoke:")) for m in due(stack)))
        finally:
            resume(redislib.Redis.from_url(stack.redis.url))
        audit_verifies(stack)


def test_a_lane_entry_nobody_popped_is_granted_once_after_its_lease_lapses():
    """The lane said it was read, but its reader died before popping: the claim lapses, the next
    worker's scheduler claims the grant again, and the stale entry it also finds does nothing."""
    with Stack() as stack:
        stack.serve()
        first = stack.worker(concurrency=1)
        r = rdb(stack)
        rid, token = ask(stack, "quick", reason="lane: reader died")
        stack.message_ts(rid)
        first.kill()
        r.set(keys.access_lane_alive(), "1", px=60_000)  # as its reader left it, seconds ago
        approve(stack, rid)
        wait_until(lambda: any(e.startswith(f"grant:{rid} ") for e in lane(r)), 10, message="grant in the lane")
        assert r.hget(f"jit:req:{rid}", "status") == "approved"
        r.zadd(keys.due(), {f"grant:{rid}": now_ms() - 1})  # what LEASE_MS later looks like
        stack.worker(concurrency=1)
        assert stack.wait_status(rid, token, {"active", "failed"}, timeout=30)["status"] == "active"
        wait_until(lambda: lane(r) == [], 10, message="the stale entry popped")
        time.sleep(0.5)
        assert len(audit(stack, "grant.issued", rid)) == 1
        assert stack.get(rid, token, path="/credential").status_code == 200
        audit_verifies(stack)
