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
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from bot.core.clock import now_ms
from bot.store.due import LEASE_MS, DueQueue

log = logging.getLogger("jit.worker")

#: Threads per runner: one slow backend call holds up only its own batch.
THREADS = 4
#: Most items one batch carries (expiries: one lease, one read and one write round trip for all).
MAX_BATCH = 20

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
        self._queue: queue.Queue[tuple[Batch, int] | None] = queue.Queue()
        self._busy = 0
        self._stopping = False
        self._changed = threading.Condition()
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(threads)]

    def start(self) -> Runner:
        for t in self._threads:
            t.start()
        return self

    def idle(self) -> int:
        """Threads free to start a batch now (queued batches count against them)."""
        with self._changed:
            return self.size - self._busy - self._queue.qsize()

    def wait_idle(self, timeout: float) -> bool:
        """Until a thread is free (True) or `timeout` seconds passed (False)."""
        with self._changed:
            return self._changed.wait_for(lambda: self.size - self._busy - self._queue.qsize() > 0, timeout)

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
        for i in range(0, len(items), size):
            self._queue.put((items[i : i + size], held_until))
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """Let the batches in hand finish (a graceful stop), then end the threads: `timeout` seconds
        for all of them together (compose's stop grace period bounds the whole worker)."""
        self._stopping = True
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        while True:
            got = self._queue.get()
            if got is None:
                return
            batch, held_until = got
            with self._changed:
                self._busy += 1
            try:
                self.run_batch(batch, held_until)
            except Exception:  # noqa: BLE001 - the claims were not finished: they come due again
                log.exception("batch failed; its members come due again when their lease lapses")
            finally:
                with self._changed:
                    self._busy -= 1
                    self._changed.notify_all()
