"""Backpressure for the hook: a bounded count of requests in flight in one server process.

A `jit serve` worker is one gevent process: it accepts every connection and interleaves the
requests at each Redis call, so a flood does not wait in a queue somewhere visible — every request
gets slower together, and seconds later all of them answer late. Counting the requests being
worked on, and refusing the one over the bound at once (503, `Retry-After`, before its body is
read or anything is stored), keeps the accepted ones within their latency budget and tells the
rest, in a millisecond, to come back. The pipeline client retries a 503 after its Retry-After.

Long-polls are not counted: they wait, not work, and are bounded per pipeline (LongPollLeases).
"""

from __future__ import annotations

import threading


class Admission:
    """At most `limit` requests in flight in this process (0: no bound)."""

    def __init__(self, limit: int, retry_after_s: int = 1) -> None:
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.in_flight = 0
        self.refused = 0
        self._lock = threading.Lock()  # gevent-patched in `jit serve`: never held across I/O

    def enter(self) -> bool:
        """Take a place; False (and counted as refused) when all are taken."""
        with self._lock:
            if self.limit and self.in_flight >= self.limit:
                self.refused += 1
                return False
            self.in_flight += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1
