"""The due queue and its scheduler: never early, never lost, leases kept while work runs."""

from __future__ import annotations

import threading
import time

import pytest
import redis as redislib

from bot.core.clock import now_ms
from bot.store import keys
from bot.store.due import LEASE_MS, DueQueue
from workers.queue.runner import MAX_BATCH as REVOKER_BATCH
from workers.queue.runner import Runner
from workers.queue.scheduler import MAX_WAITING_JOBS, STORM, BatchLease, Lease, Scheduler


@pytest.fixture
def r(redis_url):
    return redislib.Redis.from_url(redis_url, decode_responses=True)


class Recorder:
    def __init__(self):
        self.kicked: list[tuple[str, int, int]] = []

    def kick_many(self, items, *, lane=True):
        for m, score in items:
            self.kicked.append((m, score, now_ms()))


def test_claim_takes_only_due_members_and_leases_them(r):
    q = DueQueue(r)
    t = now_ms()
    r.zadd(keys.due(), {"expire:a": t - 10, "expire:b": t + 60_000})
    claimed = q.claim(t, lease_ms=5000)
    assert [m for m, _ in claimed] == ["expire:a"]
    assert q.score("expire:a") == t + 5000
    assert q.claim(t) == []  # leased: nobody else takes it


def test_done_only_removes_the_claim_it_owns(r):
    q = DueQueue(r)
    t = now_ms()
    q.schedule("slack:x", t)
    ((_, token),) = q.claim(t)
    q.schedule("slack:x", t + 1)  # new work arrived meanwhile: the running job's claim is void
    assert q.done("slack:x", token) is False
    assert q.score("slack:x") == t + 1
    ((_, again),) = q.claim(t + 1)
    assert again != token
    assert q.done("slack:x", again) is True and q.score("slack:x") is None


def test_a_stale_claim_can_neither_extend_retry_nor_finish(r):
    """Fencing: a job that waited in RQ longer than its lease finds its member claimed again;
    it must not run, and nothing it says changes the member."""
    q = DueQueue(r)
    t = now_ms()
    q.schedule("grant:x", t)
    ((_, first),) = q.claim(t, lease_ms=50)
    ((_, second),) = q.claim(t + 100)  # the lease ran out: handed out again
    assert first != second
    with Lease(q, "grant:x", first) as stale:
        assert stale.held is False
    assert q.extend("grant:x", first, t + 10**9) is False
    assert q.failed("grant:x", first, t) == -1
    assert q.done("grant:x", first) is False
    assert q.score("grant:x") == t + 100 + 10_000  # still the current claim's lease
    with Lease(q, "grant:x", second) as current:
        assert current.held is True
    assert q.done("grant:x", second) is True


def test_failures_back_off_exponentially(r):
    q = DueQueue(r)
    t = now_ms()
    q.schedule("grant:x", t)
    delays = []
    for _ in range(4):
        ((_, token),) = q.claim(now_ms() + 10**9)  # claim whatever is there
        before = now_ms()
        q.failed("grant:x", token, before)
        delays.append(q.score("grant:x") - before)
    assert delays == [1000, 2000, 4000, 8000]
    assert r.hget(keys.due_attempts(), "grant:x") == "4"


def test_lease_is_extended_while_the_job_runs(r):
    q = DueQueue(r)
    t = now_ms()
    q.schedule("grant:slow", t)
    ((_, token),) = q.claim(t, lease_ms=300)
    with Lease(q, "grant:slow", token, lease_ms=300) as lease:
        assert lease.held
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:  # three lease lengths and more
            assert q.claim(now_ms()) == []  # still ours
            time.sleep(0.05)
    assert q.score("grant:slow") > t + 300
    assert q.done("grant:slow", token)


def test_scheduler_fires_on_time_in_real_time(r, redis_url):
    rec = Recorder()
    sched = Scheduler(r, redislib.Redis.from_url(redis_url, decode_responses=True), rec)
    thread = threading.Thread(target=sched.run, daemon=True)
    thread.start()
    try:
        time.sleep(0.3)  # the scheduler is now asleep with nothing due
        due = {f"expire:r{i}": now_ms() + 400 + 150 * i for i in range(5)}
        pipe = r.pipeline()
        pipe.zadd(keys.due(), due)
        pipe.rpush(keys.due_wake(), "1")
        pipe.execute()
        deadline = time.time() + 10
        while len(rec.kicked) < 5 and time.time() < deadline:
            time.sleep(0.02)
    finally:
        sched.stop()
        r.rpush(keys.due_wake(), "1")
        thread.join(10)
    assert sorted(m for m, _, _ in rec.kicked) == sorted(due)
    for member, _, fired in rec.kicked:
        assert fired >= due[member], f"{member} fired early"


def test_many_due_at_once_share_jobs_and_all_run(jit):
    """A burst of expiries is batched into fewer RQ jobs, and every member still runs once."""
    from workers.queue.dispatch import ACCESS_QUEUE

    rids = []
    for i in range(12):
        rid = jit.ask("quick", ttl="1m", reason=f"burst {i}")["id"]
        jit.rt.decisions.approve(rid, "U0LEAD1")
        rids.append(rid)
    jit.work()
    reqs = [jit.rt.store.get(r) for r in rids]
    assert all(r.issued_at is not None for r in reqs)
    # A minute passes, as far as these grants know: all twelve fall due at the same moment,
    # however long the grants above took on a busy machine.
    due = DueQueue(jit.rt.redis)
    past = now_ms() - 1
    for r in rids:
        jit.rt.redis.hset(keys.request(r), "expires_ms", past)
        due.schedule(f"expire:{r}", past)
    sched = Scheduler(jit.rt.redis, jit.rt.redis, jit.rt.dispatcher)
    assert sched.run_once() >= 12
    queued = jit.rt.dispatcher.queues[ACCESS_QUEUE].count
    assert 1 < queued < 12  # batched, yet spread over several jobs for several workers
    jit.work()
    assert [jit.rt.store.get(r).status for r in rids] == ["expired"] * 12
    revoked = [e.body["request_id"] for e in jit.rt.audit.latest(200) if e.body["event"] == "grant.revoked"]
    assert sorted(revoked) == sorted(rids)


def test_the_scheduler_feeds_rq_no_faster_than_its_workers_take_the_work(r, redis_url):
    """While jobs pile up unstarted, due items stay unclaimed in the due queue; once the workers catch
    up, everything due by then is claimed at once (fuller batches), none early, none lost."""

    class Backlogged(Recorder):
        def __init__(self):
            super().__init__()
            self.backlog = MAX_WAITING_JOBS
            self.calls = 0

        def waiting(self):
            return self.backlog

        def kick_many(self, items, *, lane=True):
            if items:
                self.calls += 1
            super().kick_many(items)

    rec = Backlogged()
    sched = Scheduler(r, redislib.Redis.from_url(redis_url, decode_responses=True), rec)
    thread = threading.Thread(target=sched.run, daemon=True)
    thread.start()
    try:
        t = now_ms()
        due = {f"expire:b{i}": t + 20 * i for i in range(10)}
        r.zadd(keys.due(), due)
        r.rpush(keys.due_wake(), "1")
        deadline = time.monotonic() + 10
        while now_ms() < max(due.values()) + 300 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert rec.kicked == [], "nothing is handed out while the workers are behind"
        assert DueQueue(r).claim(0) == [] and r.zcard(keys.due()) == 10  # unclaimed, all still owed
        rec.backlog = 0  # the workers caught up
        deadline = time.monotonic() + 10
        while len(rec.kicked) < 10 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        sched.stop()
        r.rpush(keys.due_wake(), "1")
        thread.join(10)
    assert sorted(m for m, _, _ in rec.kicked) == sorted(due)
    assert rec.calls == 1, "everything due by then goes out together"
    assert all(fired >= due[m] for m, _, fired in rec.kicked)


class HeldRunner(Runner):
    """A revoker whose batches block until released, and record what they were given."""

    def __init__(self, due, threads=2):
        self.batches: list[list[tuple[str, str]]] = []
        self.release = threading.Event()
        super().__init__(self._record, due, threads=threads)

    def _record(self, items, held_until_ms):
        self.batches.append(items)
        self.release.wait(10)


def test_expiries_go_to_the_revoker_with_the_short_lease_and_the_rest_to_rq(r, redis_url):
    q = DueQueue(r)
    revoker = HeldRunner(q).start()
    rec = Recorder()
    try:
        t = now_ms()
        r.zadd(keys.due(), {"expire:a": t - 5, "expire:b": t - 4, "slack:a": t - 3, "grant:c": t - 2})
        Scheduler(r, redislib.Redis.from_url(redis_url, decode_responses=True), rec, revoker=revoker).run_once()
        assert sorted(m for m, _, _ in rec.kicked) == ["grant:c", "slack:a"]
        deadline = time.monotonic() + 10
        while sum(len(b) for b in revoker.batches) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(m for b in revoker.batches for m, _ in b) == ["expire:a", "expire:b"]
        # handed over in this process: leased for LEASE_MS, not the 60 s a job waiting in RQ gets,
        # so a worker that dies with them in hand gives them back within seconds
        for member in ("expire:a", "expire:b"):
            assert q.score(member) <= now_ms() + LEASE_MS
        assert q.score("slack:a") > now_ms() + LEASE_MS
    finally:
        revoker.release.set()
        revoker.stop(5)


class BehindRq(Recorder):
    """RQ's access queue with MAX_WAITING_JOBS unstarted jobs: the workers are behind."""

    def waiting(self):
        return MAX_WAITING_JOBS


def test_the_scheduler_claims_nothing_while_every_revoking_thread_and_rq_are_busy(r, redis_url):
    """Due items gather in the due queue (unclaimed, still owed) while the revoker has no free thread
    and RQ is behind; once a thread frees up, everything due by then goes to it in one batch."""
    q = DueQueue(r)
    revoker = HeldRunner(q, threads=1).start()
    rq = BehindRq()
    sched = Scheduler(r, redislib.Redis.from_url(redis_url, decode_responses=True), rq, revoker=revoker)
    thread = threading.Thread(target=sched.run, daemon=True)
    thread.start()
    try:
        t = now_ms()
        r.zadd(keys.due(), {"expire:first": t})
        r.rpush(keys.due_wake(), "1")
        deadline = time.monotonic() + 10
        while not revoker.batches and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [[m for m, _ in b] for b in revoker.batches] == [["expire:first"]]
        later = {f"expire:l{i}": now_ms() + 10 * i for i in range(5)}
        r.zadd(keys.due(), later)
        r.rpush(keys.due_wake(), "1")
        deadline = time.monotonic() + 10
        while now_ms() < max(later.values()) + 200 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(revoker.batches) == 1 and rq.kicked == [], "nothing is handed out while both are busy"
        assert r.zcount(keys.due(), "-inf", now_ms()) == 5  # all due, none claimed
        revoker.release.set()
        deadline = time.monotonic() + 10
        while len(revoker.batches) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sorted(m for m, _ in revoker.batches[1]) == sorted(later), "one batch of everything due by then"
        assert rq.kicked == []
    finally:
        sched.stop()
        r.rpush(keys.due_wake(), "1")
        revoker.release.set()
        thread.join(10)
        revoker.stop(5)


@pytest.mark.parametrize("extra, to_rq", [(10, 0), (STORM + 5, STORM + 5)])
def test_a_storm_beyond_the_revoking_threads_goes_to_rq_workers_too(r, redis_url, extra, to_rq):
    """A storm is spread over every process: what the free threads cannot start now goes to RQ,
    whose worker processes revoke beside them. A few more than the threads take wait for them."""
    q = DueQueue(r)
    revoker = HeldRunner(q, threads=1).start()
    rq = Recorder()
    try:
        t = now_ms()
        overdue = {f"expire:s{i}": t - 1000 + i for i in range(REVOKER_BATCH + extra)}
        r.zadd(keys.due(), overdue)
        Scheduler(r, redislib.Redis.from_url(redis_url, decode_responses=True), rq, revoker=revoker).run_once()
        deadline = time.monotonic() + 10
        while not revoker.batches and time.monotonic() < deadline:
            time.sleep(0.01)
        sent_rq = [m for m, _, _ in rq.kicked]
        assert len(sent_rq) == to_rq
        revoker.release.set()
        deadline = time.monotonic() + 10
        while sum(len(b) for b in revoker.batches) < len(overdue) - to_rq and time.monotonic() < deadline:
            time.sleep(0.01)
        to_threads = [m for b in revoker.batches for m, _ in b]
        assert sorted(to_threads + sent_rq) == sorted(overdue)
        if sent_rq:
            assert max(overdue[m] for m in to_threads) < min(overdue[m] for m in sent_rq), "the oldest first"
    finally:
        revoker.release.set()
        revoker.stop(5)


def test_a_revoker_batch_that_raises_leaves_its_claims_to_come_due_again(r):
    q = DueQueue(r)
    t = now_ms()
    q.schedule("expire:x", t)
    claimed = q.claim(t, lease_ms=60_000)

    def boom(items, held_until_ms):
        raise RuntimeError("backend exploded")

    revoker = Runner(boom, q, threads=1).start()
    revoker.submit(claimed)
    revoker.stop(5)
    assert q.score("expire:x") is not None  # still owed: its lease lapses and it is claimed again
    assert q.score("expire:x") <= now_ms() + LEASE_MS


def test_a_revoker_stopping_lets_the_batch_in_hand_finish(r):
    q = DueQueue(r)
    finished = []
    started = threading.Event()

    def slow(items, held_until_ms):
        started.set()
        time.sleep(0.3)
        finished.extend(items)

    revoker = Runner(slow, q, threads=2).start()
    t = now_ms()
    q.schedule("expire:y", t)
    revoker.submit(q.claim(t))
    assert started.wait(5)
    revoker.stop(10)
    assert [m for m, _ in finished] == ["expire:y"]


def test_a_member_that_works_through_a_set_is_done_only_with_the_set_empty_in_one_step(r):
    """A channel's poster (`post:<channel>`) finishes and looks at its outbox once more in one
    atomic step: no crash between the two can leave an entry with no member due to take it."""
    q = DueQueue(r)
    t = now_ms()
    r.zadd(keys.due(), {"post:C1": t - 1})
    ((member, token),) = q.claim(t)
    r.hset(keys.due_attempts(), member, 3)  # earlier failures
    r.zadd("jit:slack:outbox:C1", {"r1": t})  # came in after the poster's last look
    assert q.done_unless_waiting(member, token, "jit:slack:outbox:C1", t + 5) == 0
    assert q.score(member) == t + 5 and r.hget(keys.due_claims(), member) is None  # due now, unclaimed
    assert q.done_unless_waiting(member, token, "jit:slack:outbox:C1", t + 6) == -1  # no longer its claim
    ((member, token),) = q.claim(t + 10)
    r.delete("jit:slack:outbox:C1")
    assert q.done_unless_waiting(member, token, "jit:slack:outbox:C1", t + 11) == 1
    assert q.score(member) is None and r.hget(keys.due_attempts(), member) is None


def test_ensure_queues_a_member_once_and_leaves_a_claim_on_it_alone(r):
    q = DueQueue(r)
    t = now_ms()
    assert q.ensure("post:C1", t) is True
    ((member, token),) = q.claim(t)
    assert q.ensure("post:C1", t) is False  # queued (claimed, running): unchanged
    assert r.hget(keys.due_claims(), member) == token and q.score(member) > t


class CountingDue(DueQueue):
    """A due queue that counts its lease round trips."""

    def __init__(self, r):
        super().__init__(r)
        self.extends = 0

    def extend_many(self, items, new_score):
        self.extends += 1
        return super().extend_many(items, new_score)


def test_a_batch_the_runner_just_leased_starts_without_a_round_trip_of_its_own(r):
    q = CountingDue(r)
    t = now_ms()
    q.schedule("expire:a", t)
    ran = []
    revoker = Runner(lambda items, held: ran.append((items, held)), q, threads=1).start()
    revoker.submit(q.claim(t, lease_ms=60_000))  # moved to the running lease: one round trip
    revoker.stop(5)
    ((items, held_until),) = ran
    assert q.extends == 1 and held_until >= t + LEASE_MS
    with BatchLease(q, items, held_until_ms=held_until) as lease:
        assert lease.held == items
    assert q.extends == 1  # the start trusted the runner's fresh lease
    assert q.score("expire:a") == held_until  # and the claim is that lease


def test_a_batch_whose_hold_may_have_lapsed_checks_its_claims_and_runs_none_it_lost(r):
    q = CountingDue(r)
    t = now_ms()
    q.schedule("expire:b", t)
    mine = q.claim(t, lease_ms=1)
    time.sleep(0.01)
    theirs = q.claim(now_ms())  # the lease lapsed: another worker claimed it again
    assert [m for m, _ in theirs] == ["expire:b"]
    # a runner's hold, but with less than half a lease left: asked again, and found lost
    with BatchLease(q, mine, held_until_ms=now_ms() + LEASE_MS // 4) as lease:
        assert lease.held == []
    assert q.extends == 1
    with BatchLease(q, mine) as lease:  # nothing known: asked, as before
        assert lease.held == []


def test_claim_ahead_takes_only_unclaimed_members_of_its_kind_falling_due_soon(r):
    q = DueQueue(r)
    t = now_ms()
    r.zadd(
        keys.due(),
        {
            "expire:soon": t + 10,
            "expire:later": t + 1000,
            "slack:soon": t + 5,
            "expire:held": t + 8,
            "expire:due": t - 1,
        },
    )
    r.hset(keys.due_claims(), "expire:held", "c-someone")  # a claim whose lease is about to lapse
    [(member, token, due)] = q.claim_ahead(t, t + 25, "expire:")
    assert (member, due) == ("expire:soon", t + 10)
    assert q.score("expire:soon") == t + LEASE_MS, "leased like any claim"
    assert q.claim_ahead(t, t + 25, "expire:") == [], "claimed: nobody else takes it"
    assert {m for m, _ in q.claim(t)} == {"expire:due"}, "what is due now is the ordinary claim's"
    q.schedule("expire:soon", t + 600_000)  # an extension moves it: the early claim is void
    assert not q.extend("expire:soon", token, t + LEASE_MS)


class TimedRunner(Runner):
    """A revoker that records when each batch was handed over and when it started."""

    def __init__(self, due, threads=2):
        self.handed: list[tuple[int, list[str]]] = []
        self.started: list[tuple[int, list[str]]] = []
        super().__init__(lambda items, held: self.started.append((now_ms(), [m for m, _ in items])), due, threads)

    def submit_at(self, items, held_until_ms):
        self.handed.append((now_ms(), [m for m, _, _ in items]))
        return super().submit_at(items, held_until_ms)


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.005)
    return predicate()


def test_a_batch_handed_over_ahead_starts_when_its_last_member_is_due_never_before(r):
    runner = TimedRunner(DueQueue(r)).start()
    try:
        t = now_ms()  # due well after the checks below, however busy the machine
        due = {"expire:a": t + 1500, "expire:b": t + 1500, "expire:c": t + 1600}
        assert runner.submit_at([(m, "tok", at) for m, at in due.items()], t + LEASE_MS)
        assert runner.idle() == runner.size, "a batch held for later takes no thread until it may start"
        assert runner.started == []
        assert wait_for(lambda: len(runner.started) == 2)
        assert sorted(sorted(members) for _, members in runner.started) == [["expire:a", "expire:b"], ["expire:c"]]
        for at, members in runner.started:
            assert at >= max(due[m] for m in members), "never before it is due"
    finally:
        runner.stop(5)


def test_a_runner_stopping_still_runs_what_it_holds_for_later_when_due(r):
    runner = TimedRunner(DueQueue(r)).start()
    t = now_ms()
    runner.submit_at([("expire:last", "tok", t + 80)], t + LEASE_MS)
    runner.stop(5)
    assert [m for _, m in runner.started] == [["expire:last"]]
    assert runner.started[0][0] >= t + 80
    assert not runner.submit_at([("expire:after", "tok", t + 80)], t + LEASE_MS), "stopped: takes nothing more"


def test_an_expiry_about_to_fall_due_is_claimed_and_handed_over_before_its_time(r, redis_url):
    """The claim and the hand-off are done before the expiry is due; the revoke starts when it is
    due. Other kinds are never claimed early: they go to RQ when due."""
    q = DueQueue(r)
    revoker = TimedRunner(q).start()
    rec = Recorder()
    # ahead by more than the wait, so a busy machine cannot turn the early claim into a due one
    sched = Scheduler(r, redislib.Redis.from_url(redis_url, decode_responses=True), rec, revoker=revoker, ahead_ms=5000)
    t = now_ms() + 2000
    r.zadd(keys.due(), {"expire:x": t, "slack:y": t})  # queued before the scheduler's first look
    thread = threading.Thread(target=sched.run, daemon=True)
    thread.start()
    try:
        assert wait_for(lambda: revoker.started and rec.kicked)
        [(handed_at, handed)] = revoker.handed
        assert handed == ["expire:x"] and handed_at < t, "claimed and handed over ahead of time"
        [(started_at, started)] = revoker.started
        assert started == ["expire:x"] and started_at >= t, "started when due, never before"
        assert [(m, fired >= t) for m, _, fired in rec.kicked] == [("slack:y", True)]
    finally:
        sched.stop()
        r.rpush(keys.due_wake(), "1")
        thread.join(10)
        revoker.stop(5)
