"""The access lane: a clicked grant (or an asked-for revoke) starts in `jit worker`'s own threads,
not after RQ's pickup, while the due queue keeps it safe from a lost worker or a stale entry."""

from __future__ import annotations

import threading
import time

import pytest
import redis as redislib

from bot.core.clock import now_ms
from bot.store import keys
from bot.store.due import DueQueue
from workers.jobs import run_due_batch
from workers.queue.dispatch import ACCESS_QUEUE, SLACK_QUEUE, Dispatcher
from workers.queue.lane import LaneReader, entry
from workers.queue.runner import Runner


@pytest.fixture
def r(redis_url):
    return redislib.Redis.from_url(redis_url, decode_responses=True)


@pytest.fixture
def raw(redis_url):
    return redislib.Redis.from_url(redis_url)


def lane(r) -> list[str]:
    return r.lrange(keys.access_lane(), 0, -1)


def rq_jobs(dispatcher: Dispatcher, name: str) -> list[str]:
    return dispatcher.queues[name].job_ids


class Recording(Runner):
    """A runner whose batches record what they got; `hold` keeps its threads busy until released."""

    def __init__(self, due, threads=1):
        self.batches: list[list[tuple[str, str]]] = []
        self.hold = threading.Event()
        self.hold.set()
        super().__init__(self._record, due, threads=threads)

    def _record(self, items, held_until_ms):
        self.batches.append(items)
        self.hold.wait(10)


def wait_for(predicate, timeout=10):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_grants_and_revokes_go_to_rq_while_no_worker_reads_the_lane(r, raw):
    d = Dispatcher(raw)
    d.kick_many([("grant:a", "t1"), ("revoke:b", "t2"), ("slack:a", "t3")])
    assert lane(r) == []
    assert len(rq_jobs(d, ACCESS_QUEUE)) >= 1 and len(rq_jobs(d, SLACK_QUEUE)) == 1


def test_grants_and_revokes_take_the_lane_while_a_worker_reads_it(r, raw):
    LaneReader(r, r, Runner(lambda items, held: None, DueQueue(r)), lambda items: None).say_alive()
    d = Dispatcher(raw)
    d.kick_many([("grant:a", "t1"), ("revoke:b", "t2"), ("reissue:c", "t4"), ("slack:a", "t3"), ("timeout:d", "t5")])
    assert lane(r) == [entry("grant:a", "t1"), entry("revoke:b", "t2"), entry("reissue:c", "t4")]
    assert len(rq_jobs(d, SLACK_QUEUE)) == 1
    assert len(rq_jobs(d, ACCESS_QUEUE)) == 1  # the timeout: nobody waits on it
    # what the lane hands on (its threads busy) goes to RQ, not back to the lane
    d.kick_many([("grant:e", "t6")], lane=False)
    assert len(lane(r)) == 3 and len(rq_jobs(d, ACCESS_QUEUE)) == 2


def test_the_lane_is_closed_again_once_its_readers_are_gone(r, raw):
    reader = LaneReader(r, r, Runner(lambda items, held: None, DueQueue(r)), lambda items: None)
    reader.say_alive()
    r.pexpire(keys.access_lane_alive(), 50)  # the reader died; its word lapses
    time.sleep(0.1)
    d = Dispatcher(raw)
    d.kick_many([("grant:a", "t1")])
    assert lane(r) == [] and len(rq_jobs(d, ACCESS_QUEUE)) == 1


def approved(jit) -> tuple[str, str]:
    """A request approved with the harness's store (no worker): (its id, its grant claim's token)."""
    rid = jit.ask("quick", ttl="1m", reason="lane")["id"]
    jit.rt.decisions.approve(rid, "U0LEAD1")
    token = jit.rt.redis.hget(keys.due_claims(), f"grant:{rid}")
    assert token and jit.rt.store.get(rid).status.value == "approved"
    return rid, token


def lane_threads(jit) -> Runner:
    return Runner(lambda items, held: run_due_batch(jit.rt, items), DueQueue(jit.rt.redis), threads=2).start()


def test_the_reader_grants_a_kicked_grant_in_its_own_threads(jit):
    rid, token = approved(jit)
    r = jit.rt.redis
    runner = lane_threads(jit)
    to_rq: list = []
    try:
        r.rpush(keys.access_lane(), entry(f"grant:{rid}", token))
        assert LaneReader(r, r, runner, to_rq.extend).run_once(1) == 1
        wait_for(lambda: jit.rt.store.get(rid).status.value == "active")
        assert to_rq == []
        wait_for(lambda: r.hget(keys.due_claims(), f"grant:{rid}") is None)  # done: off the due queue
        assert r.zscore(keys.due(), f"grant:{rid}") is None
    finally:
        runner.stop(5)
    assert [e.body["request_id"] for e in jit.rt.audit.latest(50) if e.body["event"] == "grant.issued"] == [rid]


def test_a_stale_lane_entry_runs_nothing(jit):
    """The entry's claim lapsed and the scheduler claimed the grant again: the old entry does
    nothing, and the current claim grants once."""
    rid, old = approved(jit)
    r = jit.rt.redis
    q = DueQueue(r)
    r.zadd(keys.due(), {f"grant:{rid}": now_ms() - 1})  # as the lease's lapse leaves it
    claimed = dict(q.claim(now_ms(), 10, 60_000))  # (its message may be due by now as well)
    reclaimed = (f"grant:{rid}", claimed[f"grant:{rid}"])
    assert reclaimed[1] != old
    runner = lane_threads(jit)
    try:
        reader = LaneReader(r, r, runner, lambda items: None)
        r.rpush(keys.access_lane(), entry(f"grant:{rid}", old))
        reader.run_once(1)
        wait_for(lambda: runner.idle() == 2)
        assert jit.rt.store.get(rid).status.value == "approved"
        assert r.hget(keys.due_claims(), f"grant:{rid}") == reclaimed[1]
        r.rpush(keys.access_lane(), entry(*reclaimed))
        reader.run_once(1)
        wait_for(lambda: jit.rt.store.get(rid).status.value == "active")
    finally:
        runner.stop(5)
    assert [e.body["request_id"] for e in jit.rt.audit.latest(50) if e.body["event"] == "grant.issued"] == [rid]


def test_while_every_lane_thread_is_busy_what_is_popped_goes_to_rq(r):
    q = DueQueue(r)
    runner = Recording(q, threads=1).start()
    runner.hold.clear()
    to_rq: list = []
    try:
        r.zadd(keys.due(), {"grant:a": now_ms() - 2, "grant:b": now_ms() - 1})
        a, b = q.claim(now_ms(), 10, 60_000)
        reader = LaneReader(r, r, runner, to_rq.extend)
        r.rpush(keys.access_lane(), entry(*a))
        reader.run_once(1)
        wait_for(lambda: runner.batches)  # the one thread now holds a
        r.rpush(keys.access_lane(), entry(*b))
        reader.run_once(1)
        assert to_rq == [b] and runner.batches == [[a]]
    finally:
        runner.hold.set()
        runner.stop(5)


def test_a_stopping_reader_hands_what_it_popped_to_rq(r):
    q = DueQueue(r)
    runner = Recording(q).start()
    to_rq: list = []
    try:
        reader = LaneReader(r, r, runner, to_rq.extend)
        reader.stopping.set()
        r.rpush(keys.access_lane(), entry("grant:a", "c1"))
        reader.run_once(1)
        assert to_rq == [("grant:a", "c1")] and runner.batches == []
    finally:
        runner.stop(5)


def test_what_the_scheduler_claims_again_goes_to_rq_never_back_to_the_lane(r, raw, redis_url):
    """A grant whose lane entry nobody ran comes due when its lease lapses; the scheduler's claim
    of it goes to RQ (a lane that was not read could be unread still)."""
    from workers.queue.scheduler import Scheduler

    LaneReader(r, r, Runner(lambda items, held: None, DueQueue(r)), lambda items: None).say_alive()
    d = Dispatcher(raw)
    r.zadd(keys.due(), {"grant:a": now_ms() - 1, "revoke:b": now_ms() - 1})
    assert Scheduler(r, redislib.Redis.from_url(redis_url, decode_responses=True), d).run_once() == 2
    assert lane(r) == [] and len(rq_jobs(d, ACCESS_QUEUE)) >= 1


class FailingPops:
    """A connection whose blocking pops fail (a proxy that refuses them, an ACL without BLPOP)."""

    def blpop(self, *a, **kw):
        raise redislib.ConnectionError("blocking commands refused")


def test_a_reader_whose_pops_fail_does_not_keep_the_lane_open(r):
    reader = LaneReader(r, FailingPops(), Runner(lambda items, held: None, DueQueue(r)), lambda items: None)
    with pytest.raises(redislib.ConnectionError):
        reader.run_once(0.1)
    assert not r.exists(keys.access_lane_alive())


def test_a_stopping_reader_closes_the_lane_and_a_stopped_runner_takes_nothing(r):
    q = DueQueue(r)
    runner = Recording(q).start()
    to_rq: list = []
    reader = LaneReader(r, r, runner, to_rq.extend)
    reader.say_alive()
    reader.stop()
    assert not r.exists(keys.access_lane_alive())
    runner.stop(5)
    assert runner.submit([("grant:a", "c1")]) is False
    r.rpush(keys.access_lane(), entry("grant:a", "c1"))
    reader.run_once(1)
    assert to_rq == [("grant:a", "c1")] and runner.batches == []
