"""The access lane: a grant an approver just clicked for (and a revoke or a re-issue someone asked
for) starts in `jit worker`'s own threads at once, instead of waiting for RQ to pick its job up.

A person is watching these: the approver's click and the pipeline's long-poll are on either side
of the grant. Through RQ the job waited 6–11 ms before it started (RQ's dequeue and bookkeeping
are about twenty round trips; measured in docs/performance.md). Here the request thread that made
the transition pushes the claimed member and its token onto a Redis list (in the same round trip
as its RQ jobs); a thread of every `jit worker` blocks on that list and hands what it pops to a
`Runner` of its own (not the revoking threads: a slow grant backend never delays an expiry).

Nothing here is the durable record. The transition already claimed the member in the due queue
with a LEASE_MS lease (so the lane leases nothing more before the job's own `Lease`): if no
worker pops the entry, or the one that popped it dies, the lease lapses and the scheduler claims
the member again (with a new token, so a late pop of the old entry does nothing: its `Lease`
finds the claim is not its own).

Request threads push to the lane only while some worker says it reads it (`access_lane_alive`,
refreshed after pops that worked, cleared by a reader that stops, lapsing ALIVE_MS after the last
reader died; each request thread trusts what it read for LANE_CHECK_S); otherwise, as when a
worker runs in burst mode, the member goes to RQ as before. When every lane thread is busy, or
the worker is stopping, what is popped goes to RQ too. Only a transition's own kick takes the
lane: what the scheduler claims again (a retry, a lapsed lease) goes to RQ, so an entry is never
pushed back onto a lane nobody reads.

Unlike an RQ job, a lane thread has no job timeout of its own: a backend must bound its own calls
(the built-in ones do: exec and webhook timeouts, PostgreSQL and Redis socket timeouts), as it
must for the revoking threads.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from redis import Redis

from bot.store import keys
from workers.queue.runner import Batch, Runner

log = logging.getLogger("jit.worker")

#: Due kinds someone waits for: they take the lane when a worker reads it.
LANE_KINDS = ("grant:", "revoke:", "reissue:")
#: How long the lane counts as read after a reader last said so.
ALIVE_MS = 3000
#: How often a reader says so (also the longest its blocking pop waits, so it stops within this).
REFRESH_S = 1.0


def entry(member: str, token: str) -> str:
    return f"{member} {token}"


def parse(raw: str | bytes) -> tuple[str, str] | None:
    text = raw.decode() if isinstance(raw, bytes) else raw
    member, _, token = text.partition(" ")
    return (member, token) if member and token else None


class LaneReader:
    """Pops the lane and hands what it pops to `runner`, or to `to_rq` while the runner is busy."""

    def __init__(self, redis: Redis, blocking: Redis, runner: Runner, to_rq: Callable[[Batch], None]) -> None:
        self.redis = redis
        self.blocking = blocking
        self.runner = runner
        self.to_rq = to_rq
        self.stopping = threading.Event()
        self._said = 0.0
        self._thread = threading.Thread(target=self.run, name="jit-lane", daemon=True)

    def start(self) -> LaneReader:
        self._thread.start()
        return self

    def say_alive(self) -> None:
        self.redis.set(keys.access_lane_alive(), "1", px=ALIVE_MS)
        self._said = time.monotonic()

    def say_gone(self) -> None:
        """This reader stops: request threads go back to RQ at once rather than after ALIVE_MS
        (another reader still running says so again within REFRESH_S)."""
        self.redis.delete(keys.access_lane_alive())

    def run_once(self, timeout: float) -> int:
        """Wait up to `timeout` seconds for the lane's next entry; hand it over (to RQ once stopping
        or while every thread is busy). Returns how many were handed over (0 or 1: a burst is
        popped one entry a round trip, each at once, as a separate pop of the rest would cost a
        round trip too)."""
        got = self.blocking.blpop([keys.access_lane()], timeout=timeout)
        item = parse(got[1]) if got else None
        if item is not None:
            items = [item]
            if self.stopping.is_set() or self.runner.idle() <= 0 or not self.runner.submit(items, lease=False):
                self.to_rq(items)
        # said only after a pop that worked (a reader whose pops fail must not keep the lane
        # open), and after handing the item over (not between a click and its grant)
        if time.monotonic() - self._said >= REFRESH_S and not self.stopping.is_set():
            self.say_alive()
        return 0 if item is None else 1

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.run_once(REFRESH_S)
            except Exception:  # noqa: BLE001 - Redis away: the claims come due again; keep reading
                log.exception("access lane error; retrying")
                self.stopping.wait(0.5)

    def stop(self, join: bool = True) -> None:
        """Stop reading (within REFRESH_S) and say so; what is popped meanwhile goes to RQ."""
        self.stopping.set()
        try:
            self.say_gone()
        except Exception:  # noqa: BLE001 - Redis away: the word lapses within ALIVE_MS anyway
            log.warning("could not clear the access lane's alive key; it lapses in %d ms", ALIVE_MS)
        if join and self._thread.is_alive():
            self._thread.join(timeout=REFRESH_S + 5)
