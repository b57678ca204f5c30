"""Grants are never orphaned and never issued twice: intent before the backend, fenced results,
and whatever a grant may have created for a request that ended is revoked like an expiry."""

from __future__ import annotations

import threading
import time

import pytest

from bot.core.clock import now_ms
from bot.store import keys
from bot.store.due import DueQueue
from workers.queue.scheduler import QUEUED_LEASE_MS


def flag(state_dir, name, value=""):
    (state_dir / name).write_text(value)


def unflag(state_dir, name):
    (state_dir / name).unlink(missing_ok=True)


def approved(jit, action="deploy-prod"):
    rid = jit.ask(action)["id"]
    jit.work()
    for user in ("U0LEAD1", "U0LEAD2")[: 2 if action == "deploy-prod" else 1]:
        jit.rt.decisions.approve(rid, user)
    return rid


def test_cancel_while_the_backend_grants_then_a_failing_revoke_is_retried_until_it_succeeds(jit, state_dir):
    """A DELETE lands while the grant command runs. What the backend then issues is revoked through
    the due queue: the revoke fails twice (the target is down), is retried with backoff and
    succeeds; meanwhile the request shows the revocation pending. Nothing outlives the cancel."""
    from workers import jobs

    flag(state_dir, "slow-grant", "1.5")
    rid = approved(jit)
    ((member, token),) = [c for c in DueQueue(jit.rt.redis).claim(now_ms() + 11_000) if c[0] == f"grant:{rid}"]
    worker = threading.Thread(target=jobs.run_due, args=(jit.rt, member, token), daemon=True)  # a job
    worker.start()
    r = jit.rt.redis
    deadline = time.monotonic() + 30
    while not r.hget(keys.request(rid), "grant_inflight"):  # the grant command is running now
        assert time.monotonic() < deadline, "the grant never started"
        time.sleep(0.01)
    flag(state_dir, "fail-revoke")
    assert jit.release(rid).get_json()["status"] == "cancelled"
    worker.join(60)
    unflag(state_dir, "slow-grant")

    # the grant came back after the cancel: its credential is owed a revoke, which fails for now
    jit.drain(lambda: len(_events(jit, rid, "revoke.attempt_failed")) >= 2, what="two failed revokes")
    body = jit.status(rid).get_json()
    assert body["status"] == "cancelled" and body["revoke_pending"] is True
    assert jit.credential(rid).status_code == 410  # never handed out

    unflag(state_dir, "fail-revoke")
    jit.drain(lambda: not jit.status(rid).get_json()["revoke_pending"], timeout=90, what="the revoke")
    assert len(jit.grants(rid)) == 1
    revokes = jit.grants(rid, "revoke")
    assert revokes and '"credential": {"username"' in revokes[-1]  # revoked with what was issued
    assert [e.body["outcome"] for e in _events(jit, rid, "grant.issued")] == ["late"]
    assert len(_events(jit, rid, "grant.revoked")) == 1
    assert r.get(keys.credential(rid)) is None
    assert not [m for m in r.zrange(keys.due(), 0, -1) if m.endswith(rid)]


class Crash(BaseException):
    """The process dies here: nothing after this line of the job runs (not even its except)."""


def test_a_worker_dying_between_the_backend_and_the_record_still_leads_to_a_revoke(jit, state_dir, monkeypatch):
    """The backend issued, the worker died before jit recorded it, then the pipeline cancelled.
    The grant item comes back after its lease, finds the request ended with an attempt in
    flight, and owes a revoke: the partial grant is cleaned up by name."""
    from workers import jobs

    rid = approved(jit)
    due = DueQueue(jit.rt.redis)
    ((member, token),) = [c for c in due.claim(now_ms() + 11_000) if c[0] == f"grant:{rid}"]

    real = jit.rt.store.finish_grant
    monkeypatch.setattr(jit.rt.store, "finish_grant", lambda *a, **k: (_ for _ in ()).throw(Crash()))
    with pytest.raises(Crash):
        jobs.run_due(jit.rt, member, token)
    monkeypatch.setattr(jit.rt.store, "finish_grant", real)
    assert len(jit.grants(rid)) == 1  # the target created the identity
    assert jit.rt.redis.hget(keys.request(rid), "grant_inflight") == token

    assert jit.release(rid).get_json()["status"] == "cancelled"
    assert jit.status(rid).get_json()["revoke_pending"] is True
    # the dead job's lease runs out; the item comes due again and settles the grant
    jit.rt.redis.zadd(keys.due(), {member: now_ms() - 1})
    jit.drain(lambda: not jit.status(rid).get_json()["revoke_pending"], what="the clean-up revoke")
    revokes = jit.grants(rid, "revoke")
    assert len(revokes) == 1 and '"credential": null' in revokes[0]  # cleaned up by request id
    assert jit.rt.store.get(rid).status == "cancelled"


def test_a_grant_job_that_waited_past_its_lease_does_not_grant_again(jit, state_dir):
    """A backlog longer than the queue lease: the scheduler hands the grant out a second time.
    Two workers run both copies; the backend is called once."""
    from workers.queue.dispatch import ACCESS_QUEUE
    from workers.queue.worker import JitJob

    rid = approved(jit)  # the grant's first job waits in RQ (no worker runs yet)
    due = DueQueue(jit.rt.redis)
    later = now_ms() + QUEUED_LEASE_MS + 1000
    again = [c for c in due.claim(later, lease_ms=QUEUED_LEASE_MS) if c[0] == f"grant:{rid}"]
    assert again, "the grant item was not handed out again"
    jit.rt.dispatcher.kick_many(again)
    assert jit.rt.dispatcher.queues[ACCESS_QUEUE].count >= 2

    queued = jit.rt.dispatcher.queues[ACCESS_QUEUE].jobs
    grant_jobs = [j for j in queued if any(f"grant:{rid}" in str(a) for a in j.args)]
    assert len(grant_jobs) == 2
    # two workers take one copy each, at the same time
    copies = []
    for j in grant_jobs:  # as a JitWorker would: the job, handed the process's parts
        copy = JitJob.fetch(j.id, connection=jit.rt.raw_redis)
        copy.parts = jit.rt
        copies.append(copy)
    workers = [threading.Thread(target=c.perform) for c in copies]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    jit.work()
    assert jit.status(rid).get_json()["status"] == "active"
    assert len(jit.grants(rid)) == 1
    assert len(_events(jit, rid, "grant.issued")) == 1


def test_a_grant_for_a_request_denied_before_it_started_calls_no_backend(jit, state_dir):
    rid = approved(jit)
    assert jit.release(rid).get_json()["status"] == "cancelled"
    jit.work()
    assert jit.grants(rid) == [] and jit.grants(rid, "revoke") == []
    assert jit.status(rid).get_json()["revoke_pending"] is False


def _events(jit, rid, name):
    jit.rt.audit.flush()
    return [e for e in jit.rt.audit.entries_for_request(rid) if e.body["event"] == name]
