"""Threads inside `jit worker`'s own process that run claimed due work at once, without a trip
through RQ: the expiries the scheduler hands over, and the grants and revokes a click or a pipeline
asked for (the access lane, workers/queue/lane.py). Each use has its own `Runner`, so a slow grant
backend never holds up a revocation.

An expiry is the one piece of work whose lateness is the product's promise, and a grant is what an
approver and a waiting pipeline watch. Through RQ each paid the queue's own cost — an enqueue, a
blocking pop in another process, the job's fetch, registries and heartbeat (≈ 20 round trips and
6–7 ms before the job starts, measured on an idle machine) — before the work began. Here a thread
of the same process runs them as a batch (workers/jobs `run_due_batch`: expiries share one lease
and pipelined reads and writes; the rest run one by one).

Crash safety stays with the due queue, not with this process: a claim handed over is leased for
LEASE_MS (not the 60 s a job queued in RQ gets), the batch's lease keeps beating while it runs, and
if the process dies — before a batch started or half-way through it — every unfinished item comes
due again within seconds and the next worker's scheduler claims it (at least once; every handler
is idempotent and fenced by its claim). Callers give a runner no more than it can start at once
(`idle`), so claimed work never waits here behind a slow backend; what it cannot start goes to RQ.

Expiries about to fall due are handed over a few milliseconds early, each with the moment it is
due (`submit_at`): the runner holds them and a free thread starts each batch when its time comes,
never before. The claim and the hand-off are then done by the time the grant is due, and what
stands between the due moment and the backend revoke is a thread waking and one read.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable

from bot.core.clock import now_ms
from bot.store.due import LEASE_MS, DueQueue

log = logging.getLogger("jit.worker")

#: Threads per runner: one slow backend call holds up only its own batch.
THREADS = 4
#: Most items one batch carries (expiries: one lease, one read and one write round trip for all).
MAX_BATCH = 20
#: Items handed over ahead of time share a batch when they fall due within this many ms of each
#: other (the batch starts when its last one is due: the first at most this late).
SPAN_MS = 1

Batch = list[tuple[str, str]]


class Runner:
    """Threads that run batches of claimed due members with `run_batch` (`name`: the threads' name)."""

    def __init__(
        self, run_batch: Callable[[Batch, int], None], due: DueQueue, threads: int = THREADS, name: str = "jit-runner"
    ) -> None:
        """`run_batch(items, held_until_ms)`: the claims of `items` were this process's, leased
        until `held_until_ms`, when the runner handed them over (0: not known, check first)."""
        self.run_batch = run_batch
        self.due = due
        self.size = threads
        self._ready: deque[tuple[Batch, int]] = deque()
        self._later: list[tuple[int, int, Batch, int]] = []  # (start at ms, seq, batch, held until)
        self._seq = itertools.count()
        self._busy = 0
        self._stopping = False
        self._changed = threading.Condition()
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(threads)]

    def start(self) -> Runner:
        for t in self._threads:
            t.start()
        return self

    def idle(self) -> int:
        """Threads free to start a batch now (batches ready to start count against them; those
        held for later do not)."""
        with self._changed:
            return self.size - self._busy - len(self._ready)

    def wait_idle(self, timeout: float) -> bool:
        """Until a thread is free (True) or `timeout` seconds passed (False)."""
        with self._changed:
            return self._changed.wait_for(lambda: self.size - self._busy - len(self._ready) > 0, timeout)

    def submit(self, items: Batch, *, lease: bool = True) -> bool:
        """Hand claimed members over, as batches spread over the free threads; False (nothing
        taken) once the runner is stopping. With `lease`, their claims move from the queued lease
        to the short running one first, so a process that dies with them in hand gives them back
        within LEASE_MS (a transition's own kick already has that lease)."""
        if self._stopping:
            return False
        if not items:
            return True
        held_until = 0
        if lease:
            held_until = now_ms() + LEASE_MS
            kept = self.due.extend_many(items, held_until)
            items = [item for item, ok in zip(items, kept, strict=True) if ok]
        free = max(self.idle(), 1)
        size = max(1, min(MAX_BATCH, -(-len(items) // free)))
        with self._changed:
            for i in range(0, len(items), size):
                self._ready.append((items[i : i + size], held_until))
            self._changed.notify_all()
        return True

    def submit_at(self, items: list[tuple[str, str, int]], held_until_ms: int) -> bool:
        """Hand over claimed members that are not due yet, as (member, token, due ms): each batch
        starts when the last of its members is due, never before. Their claims are leased until
        `held_until_ms`. False (nothing taken) once the runner is stopping."""
        if self._stopping:
            return False
        batches: list[tuple[int, int, Batch]] = []  # (first due, last due, members)
        for member, token, due_ms in sorted(items, key=lambda item: item[2]):
            if batches and due_ms - batches[-1][0] <= SPAN_MS and len(batches[-1][2]) < MAX_BATCH:
                first, _, batch = batches[-1]
                batch.append((member, token))
                batches[-1] = (first, due_ms, batch)
            else:
                batches.append((due_ms, due_ms, [(member, token)]))
        with self._changed:
            for _, last_due, batch in batches:
                heapq.heappush(self._later, (last_due, next(self._seq), batch, held_until_ms))
            self._changed.notify_all()
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """Let the batches in hand finish, and those held for later run when due (milliseconds
        away: a graceful stop), then end the threads: `timeout` seconds for all of them together
        (compose's stop grace period bounds the whole worker)."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))

    def _take(self) -> tuple[Batch, int] | None:
        """The next batch to run, once it may start; None when stopping with nothing left."""
        with self._changed:
            while True:
                now = now_ms()
                while self._later and self._later[0][0] <= now:
                    _, _, batch, held_until = heapq.heappop(self._later)
                    self._ready.append((batch, held_until))
                if self._ready:
                    self._busy += 1
                    return self._ready.popleft()
                if self._stopping and not self._later:
                    return None
                self._changed.wait(None if not self._later else max(self._later[0][0] - now, 1) / 1000)

    def _run(self) -> None:
        while True:
            got = self._take()
            if got is None:
                return
            batch, held_until = got
            try:
                self.run_batch(batch, held_until)
            except Exception:  # noqa: BLE001 - the claims were not finished: they come due again
                log.exception("batch failed; its members come due again when their lease lapses")
            finally:
                with self._changed:
                    self._busy -= 1
                    self._changed.notify_all()
