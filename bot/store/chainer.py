"""Chaining the audit outbox from one thread of the process, rather than after every write.

A state change and its audit event are one atomic step: the transition's script pushes the event
to the outbox (bot/store/audit.py). Chaining it — hash-linking and signing it onto the trail — is
a second step, which every writer used to take right after its own write: a create waited for it
before answering (a quarter of `jit serve`'s CPU per create under a flood, py-spy), an expiry batch
before taking the next batch, and fifty greenlets doing so at once raced for the chain's head.

A process that runs a `Chainer` leaves that step to it: a writer wakes it and goes on; the thread
chains everything waiting in the outbox in a few script calls, so a flood of writes costs one
peek and one chain call per batch of events instead of per event. Nothing is lost by the wait:
the event is in Redis already, readers chain what waits before they read (`AuditLog._settle`), and
what a process leaves when it dies is chained by the next `flush` anywhere (the workers' upkeep).

Started on first use in the process that uses it (a thread does not survive a fork), so a
`jit serve` worker forked after the app was built gets its own.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Callable

log = logging.getLogger("jit.audit")

#: After a failed flush (Redis away), wait this long before trying again.
RETRY_S = 0.5


class Chainer:
    """Runs `flush` in a thread of its own whenever woken (once per wake-up burst)."""

    def __init__(self, flush: Callable[[], int]) -> None:
        self._flush = flush
        self._woken = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._pid = 0
        self._thread: threading.Thread | None = None

    def wake(self) -> None:
        """Something waits in the outbox: chain it soon (at once, if the thread is idle)."""
        if self._pid != os.getpid():
            self._start()
        self._woken.set()

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._woken = threading.Event()  # a parent's, copied by fork, may be set
            self._stopping = threading.Event()
            self._thread = threading.Thread(target=self._run, name="jit-audit-chainer", daemon=True)
            self._thread.start()
            self._pid = os.getpid()
            atexit.register(self.stop)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._woken.wait()
            self._woken.clear()
            if self._stopping.is_set():
                return
            try:
                self._flush()
            except Exception as e:  # noqa: BLE001 - Redis away: the events wait in the outbox
                log.warning("could not chain the audit outbox (retrying): %s", type(e).__name__)
                self._stopping.wait(RETRY_S)
                self._woken.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread, and chain what is left once more here (best effort)."""
        thread = self._thread
        if thread is None or self._pid != os.getpid():
            return
        self._stopping.set()
        self._woken.set()
        thread.join(timeout)
        self._thread, self._pid = None, 0
        try:
            self._flush()
        except Exception as e:  # noqa: BLE001 - left for the next flush anywhere
            log.warning("could not chain the audit outbox at stop: %s", type(e).__name__)
