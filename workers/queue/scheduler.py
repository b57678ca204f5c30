"""The scheduler: wakes for the next due item (not on a coarse tick), claims it and hands it to RQ.

The items themselves live in Redis (bot/store/due.py). Waiting: a blocking pop on the wake list
(pushed whenever something is scheduled) covers long waits; the last stretch is a local sleep,
because Redis only checks blocking timeouts about every 100 ms.
"""

from __future__ import annotations

import logging
import threading
from typing import Protocol

from redis import Redis

from bot.core.clock import now_ms
from bot.store import keys
from bot.store.due import EXPIRE_PREFIX, LEASE_MS, DueQueue
from workers.queue.runner import MAX_BATCH as REVOKER_BATCH
from workers.queue.runner import Runner

log = logging.getLogger("jit.expiry")

#: How long a member the scheduler handed to RQ may wait in the queue before it is handed out
#: again. A queued job is not lost with a worker (it waits in Redis for the next one); only a
#: running job is, and `Lease` shortens the lease to LEASE_MS as soon as the job starts. With
#: LEASE_MS here instead, a queue backlog over 10 s made the scheduler enqueue every waiting
#: member again, and again every 10 s: the backlog fed itself (bench/RESULTS.md).
QUEUED_LEASE_MS = 60_000

#: While this many jobs wait in RQ's access queue, the scheduler claims nothing more: due items
#: stay in the due queue, unclaimed, and the next claim takes all of them into full batches.
#: Without it, expiries falling due at a steady rate (167 a second) were handed out one or two a
#: job as they came; RQ's cost per job then outgrew the workers, the queue grew, and lateness with
#: it (bench/revocation.py: p99 52 s). Held back, the work per job grows with the backlog instead.
MAX_WAITING_JOBS = 4
#: Overdue expiries beyond what the revoking threads can start that make a storm: the rest of the
#: backlog then goes to RQ's worker processes as well (fewer wait a moment for a free thread).
STORM = 80
#: How often a held-back scheduler looks at the queue again.
HOLD_OFF_S = 0.005
#: Expiries falling due within this many ms are claimed and handed to the revoking threads before
#: they are due (each starts when due, never before): the claim, its lease and the hand-off —
#: round trips and thread wake-ups, several ms each on busy cores — are then off the path between
#: the due moment and the revoke. Enough to cover them on a loaded machine; an expiry held this
#: long by a worker that dies comes back after its lease, like any claimed one.
AHEAD_MS = 25


class Lease:
    """Keeps a claimed member's lease alive while its job runs, so a long grant or revoke is not
    handed to a second worker; a worker that dies stops extending, and the member comes due.

    `held` says whether the claim was still this job's when it started: a job whose claim was
    re-issued meanwhile (it waited in RQ longer than its lease) must not run at all."""

    def __init__(self, due: DueQueue, member: str, token: str, lease_ms: int = LEASE_MS) -> None:
        self.due = due
        self.member = member
        self.token = token
        self.lease_ms = lease_ms
        self.held = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._beat, name="jit-lease", daemon=True)

    def _extend(self) -> bool:
        try:
            return self.due.extend(self.member, self.token, now_ms() + self.lease_ms)
        except Exception:  # noqa: BLE001 - Redis away: the lease may lapse; the claim fences
            return False

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_ms / 3000):
            with self._lock:
                if self._stop.is_set() or not self._extend():
                    return

    def __enter__(self) -> Lease:
        # The scheduler claimed the member with a queue lease (QUEUED_LEASE_MS): from now on a
        # lost worker is what to guard against, so the lease becomes the short running one.
        self.held = self._extend()
        if self.held:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # No join (a thread hand-off costs milliseconds per job on a busy machine): once we hold
        # the lock, no extend is in flight and none can start.
        self._stop.set()
        with self._lock:
            pass


class BatchLease:
    """`Lease` for a batch of claimed members run by one job: one extend round trip and one beating
    thread for all of them. `held` lists the members whose claim was still this job's at the start
    (only those run); a worker that dies stops extending, and every unfinished member comes due.

    `held_until_ms`: the claims were this process's until then, as a runner that just extended
    them knows; with at least half a lease of that left, the start needs no round trip of its own
    (it is on the path of every revocation), and the beat takes over as usual."""

    def __init__(
        self, due: DueQueue, items: list[tuple[str, str]], lease_ms: int = LEASE_MS, held_until_ms: int = 0
    ) -> None:
        self.due = due
        self.items = items
        self.lease_ms = lease_ms
        self.held_until_ms = held_until_ms
        self.held: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._beat, name="jit-lease", daemon=True)

    def _extend(self) -> list[bool]:
        try:
            return self.due.extend_many(self.held or self.items, now_ms() + self.lease_ms)
        except Exception:  # noqa: BLE001 - Redis away: the leases may lapse; the claims fence
            return []

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_ms / 3000):
            with self._lock:
                if self._stop.is_set() or not any(self._extend()):
                    return

    def __enter__(self) -> BatchLease:
        if self.held_until_ms - now_ms() >= self.lease_ms // 2:
            self.held = list(self.items)
        else:
            kept = self._extend()
            self.held = [item for item, ok in zip(self.items, kept, strict=False) if ok]
        if self.held:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        with self._lock:
            pass


class Handoff(Protocol):
    """Hands claimed items to jobs (workers/queue/dispatch.py). One that also has `waiting()` (jobs
    not yet started) is not fed faster than its workers take the work (MAX_WAITING_JOBS)."""

    def kick_many(self, items: list[tuple[str, str]], *, lane: bool = True) -> None: ...


class Scheduler:
    """Wakes for the next due member (not on a coarse tick) and hands it to a job.

    Waiting: a blocking pop on the wake list (pushed whenever something is scheduled) covers
    long waits; the last stretch is a local sleep, because Redis only checks blocking timeouts
    about every 100 ms.
    """

    def __init__(
        self,
        redis: Redis,
        blocking_redis: Redis,
        dispatcher: Handoff,
        batch: int = 500,
        revoker: Runner | None = None,
        ahead_ms: int = AHEAD_MS,
    ) -> None:
        self.due = DueQueue(redis)
        self.ahead_ms = ahead_ms if revoker is not None else 0
        self.blocking = blocking_redis
        self.dispatcher = dispatcher
        self.batch = batch
        self.revoker = revoker
        self.stopping = threading.Event()
        self._waiting = getattr(dispatcher, "waiting", None)

    def run_once(self, limit: int | None = None, *, storm: bool = False) -> int:
        """Claim and dispatch what is due now (at most `limit`, else a full batch). Returns how many
        were dispatched. With a revoker, expiries go to its threads; in a storm (more overdue than
        the threads can start soon), what they cannot start now goes to RQ as well, whose worker
        processes revoke beside them. `storm`: the threads are all busy and a backlog is building."""
        items = self.due.claim(now_ms(), limit or self.batch, QUEUED_LEASE_MS)
        # what the scheduler claims (again) goes to RQ with its queued lease, never to the access
        # lane: an item whose lane entry nobody ran must not be pushed back onto that lane
        if self.revoker is None:
            self.dispatcher.kick_many(items, lane=False)
            return len(items)
        expiries = [item for item in items if item[0].startswith(EXPIRE_PREFIX)]
        room = 0 if storm else max(self.revoker.idle(), 0) * REVOKER_BATCH
        if storm or len(expiries) - room >= STORM:
            expiries, spill = expiries[:room], expiries[room:]
        else:
            spill = []  # a few batches more than the threads start at once: they wait here a moment
        self.revoker.submit(expiries)
        self.dispatcher.kick_many([item for item in items if not item[0].startswith(EXPIRE_PREFIX)] + spill, lane=False)
        return len(items)

    def run_ahead(self) -> int:
        """Claim the expiries falling due within `ahead_ms` (AHEAD_MS) and hand them to the revoking threads,
        each to start when due. Returns how many (0 without a revoker, or with none that soon)."""
        if self.revoker is None:
            return 0
        now = now_ms()
        items = self.due.claim_ahead(now, now + self.ahead_ms, EXPIRE_PREFIX, REVOKER_BATCH * self.revoker.size)
        if items and not self.revoker.submit_at(items, now + LEASE_MS):
            # the revoker is stopping: give them back as they were, due when they were due
            self.due.retry_at_many(items)
            return 0
        return len(items)

    def _plan(self) -> tuple[int | None, bool]:
        """(how much to claim now: None for a full batch, 0 to hold off; whether it is a storm).

        Holding off while the workers are behind lets due items gather into bigger batches. With
        a revoker: while its threads are all busy, hold off (a batch ends within milliseconds)
        unless a backlog of STORM or more is building and RQ keeps up; while RQ is behind, claim
        only what the free threads take."""
        rq_behind = self._waiting is not None and self._waiting() >= MAX_WAITING_JOBS
        if self.revoker is None:
            return (0 if rq_behind else None), False
        free = self.revoker.idle()
        if free <= 0:
            storm = not rq_behind and self.due.count_due(now_ms()) >= STORM
            return (None if storm else 0), storm
        return (free * REVOKER_BATCH if rq_behind else None), False

    def run(self) -> None:
        log.info("expiry scheduler started")
        while not self.stopping.is_set():
            try:
                room, storm = self._plan()
                if room == 0:
                    if self.revoker is not None:
                        self.revoker.wait_idle(HOLD_OFF_S)  # wakes as soon as a batch ends
                    else:
                        self.stopping.wait(HOLD_OFF_S)
                    continue
                if self.run_once(room, storm=storm) >= (room or self.batch):
                    continue
                nxt = self.due.next_due_ms()
                wait = 5.0 if nxt is None else (nxt - now_ms()) / 1000
                if wait <= 0:
                    continue
                ahead = self.ahead_ms / 1000 if nxt is not None else 0.0  # nothing queued: listen for new work
                if wait <= ahead:
                    if self.run_ahead():
                        continue
                    self.stopping.wait(wait)  # what is due next is not an expiry: wait for it
                elif wait - ahead > 0.25:
                    self.blocking.blpop([keys.due_wake()], timeout=min(wait - ahead - 0.15, 5.0))
                else:
                    self.stopping.wait(wait - ahead)
            except Exception:  # Redis away: keep trying, never die
                log.exception("scheduler loop error; retrying")
                self.stopping.wait(0.5)
        log.info("expiry scheduler stopped")

    def stop(self) -> None:
        self.stopping.set()
