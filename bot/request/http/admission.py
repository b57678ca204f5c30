"""Backpressure for the hook: a bound on the requests in flight in one server process, which
shrinks while requests take longer than their latency budget.

A `jit serve` worker is one gevent process: it accepts every connection and interleaves the
requests at each Redis call, so a flood does not wait in a queue somewhere visible — every request
gets slower together, and seconds later all of them answer late. Counting the requests being
worked on, and refusing the one over the bound at once (503, `Retry-After`, before its body is
read or anything is stored), keeps the accepted ones within their latency budget and tells the
rest, in a millisecond, to come back. The pipeline client retries a 503 after its Retry-After.

A fixed bound cannot be right on every machine: 16 in flight take a release's burst of pipelines
without refusing one, but on two saturated cores 16 interleaved creates each answer in hundreds of
milliseconds (and a refusal waits its turn behind them). So the bound adapts, additive increase and
multiplicative decrease as TCP's congestion window does (and Netflix's concurrency-limits' AIMD).
Only a request that shared the process with others moves the bound — at least one other in flight
and at least half the bound in use as it ends — since a request alone is as slow as the machine
makes it, and fewer in flight would not make it faster:

- such a request that took longer than the budget (`JIT_HOOK_LATENCY_BUDGET_MS`) cuts the bound to
  three quarters — once per congestion: a request that started before the last cut does not cut
  again, since it was slowed by the crowd the cut already answered;
- such a request within the budget raises it by 1/bound, i.e. by one per bound's worth of fast
  answers;
- the bound never goes under `FLOOR` nor over the configured maximum (`JIT_HOOK_MAX_IN_FLIGHT`),
  and after `RECOVER_S` without a slow crowded request it is the maximum again, so a burst after
  a quiet spell (a release's pipelines starting together) is taken whole, as with a fixed bound.

What counts is the server's own time on a request: from admission, or from the moment its body
was read when it has one, to its end — and only for requests answered with success. Anyone can send
a request without a token, and a sender can trickle its body: neither must be able to talk the
bound down for everyone else (while in flight they still take a place, as under any bound). A
slow Redis cuts the bound too; that costs throughput only when Redis is slow to answer rather than
busy, and then the requests answer late anyway.

Long-polls are not counted: they wait, not work, and are bounded per pipeline (LongPollLeases).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

#: The bound is never cut below this many requests in flight per process.
FLOOR = 2
#: Multiplicative decrease on a request over budget.
BACKOFF = 0.75
#: Seconds without a crowded request over budget after which the bound is the maximum again.
RECOVER_S = 2.0


class Admission:
    """At most `limit` requests in flight in this process (0: no bound), fewer while requests take
    longer than `budget_ms` (0: the bound stays fixed)."""

    def __init__(
        self,
        limit: int,
        budget_ms: int = 0,
        retry_after_s: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_limit = limit
        self.budget_s = budget_ms / 1000
        self.retry_after_s = retry_after_s
        self.in_flight = 0
        self.refused = 0
        self.cuts = 0
        self._window = float(limit)
        self._clock = clock
        self._last_cut = float("-inf")  # when the bound was last cut
        self._last_slow = float("-inf")  # when a request last took longer than the budget
        self._lock = threading.Lock()  # gevent-patched in `jit serve`: never held across I/O

    def now(self) -> float:
        """This bound's clock (what `enter` returns and `leave` takes)."""
        return self._clock()

    @property
    def limit(self) -> int:
        """The bound now (0: no bound)."""
        if not self.max_limit:
            return 0
        return max(min(int(self._window), self.max_limit), min(FLOOR, self.max_limit))

    def enter(self) -> float | None:
        """Take a place: the admission time to hand to `leave`, or None (counted as refused) when
        every place is taken."""
        with self._lock:
            now = self._clock()
            if self.budget_s and now - self._last_slow >= RECOVER_S:
                self._window = float(self.max_limit)
            if self.max_limit and self.in_flight >= self.limit:
                self.refused += 1
                return None
            self.in_flight += 1
            return now

    def leave(self, admitted: float | None = None, measured: bool = True) -> None:
        """A request taken at `admitted` (what `enter` returned) is done; when there is a budget
        and it is `measured` (answered with success: its time is the work's, not a sender's
        trickling), its duration moves the bound."""
        with self._lock:
            self.in_flight -= 1
            if not self.budget_s or not self.max_limit or admitted is None or not measured:
                return
            sharing = self.in_flight + 1  # this request and the others in flight as it ends
            if sharing < 2 or sharing * 2 < self.limit:
                return  # alone, or far under the bound: the bound did not shape this request
            now = self._clock()
            if now - admitted > self.budget_s:
                self._last_slow = now
                if admitted >= self._last_cut:
                    self._window = max(float(FLOOR), self._window * BACKOFF)
                    self._last_cut = now
                    self.cuts += 1
            else:
                self._window = min(float(self.max_limit), self._window + 1 / max(self._window, 1.0))
