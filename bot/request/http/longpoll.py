"""Long-poll wake-ups: one pub/sub subscription per process fans out to waiting requests.

Pub/sub is fire-and-forget, so it only wakes waiters early; each waiter also re-reads the
request every couple of seconds, which keeps it correct when a message is missed.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict

from redis import Redis

from bot.store import keys

log = logging.getLogger("jit.hook")


class Waiters:
    def __init__(self, redis_factory) -> None:
        self._factory = redis_factory
        self._lock = threading.Lock()
        self._events: dict[str, set[threading.Event]] = defaultdict(set)
        self._thread: threading.Thread | None = None
        #: The server is shutting down: waiters answer at once with what they have (the client asks
        #: again, of a server that is up), so a stop never waits out a long-poll's full `wait`.
        self.stopping = False

    def stop(self) -> None:
        """Wake every waiter now, and any that registers later at once."""
        with self._lock:
            self.stopping = True
            events = [ev for evs in self._events.values() for ev in evs]
        for ev in events:
            ev.set()

    def _ensure_listener(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(target=self._listen, name="jit-waiters", daemon=True)
            self._thread.start()

    def _listen(self) -> None:
        while True:
            try:
                r: Redis = self._factory()
                ps = r.pubsub(ignore_subscribe_messages=True)
                ps.subscribe(keys.changed_channel())
                for msg in ps.listen():
                    rid = msg.get("data")
                    if isinstance(rid, bytes):
                        rid = rid.decode()
                    with self._lock:
                        events = list(self._events.get(rid, ()))
                    for ev in events:
                        ev.set()
            except Exception as e:  # noqa: BLE001 - Redis away: waiters fall back to re-reading
                log.warning("long-poll subscription lost (%s); reconnecting", type(e).__name__)
                threading.Event().wait(1.0)

    def register(self, request_id: str) -> threading.Event:
        self._ensure_listener()
        ev = threading.Event()
        with self._lock:
            self._events[request_id].add(ev)
            if self.stopping:
                ev.set()
        return ev

    def unregister(self, request_id: str, ev: threading.Event) -> None:
        with self._lock:
            s = self._events.get(request_id)
            if s is not None:
                s.discard(ev)
                if not s:
                    del self._events[request_id]
