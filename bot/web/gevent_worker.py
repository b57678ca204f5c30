"""gunicorn's gevent worker, with a shutdown that waits for requests in flight but not for idle connections.

On SIGTERM gunicorn stops accepting and waits (up to `graceful_timeout`) until no connection is
busy. A keep-alive connection idling between two requests counts as busy, so one client that keeps
a connection open (an HTTP library's pool, a load balancer) holds every shutdown for the whole
graceful timeout. Here idle connections are closed as soon as shutdown starts; a request being
served still runs to its end, and a long-poll ends at once with the status it has (its client
polls again, of a server that is up) rather than after its full `wait`.
"""

from __future__ import annotations

import signal
import socket
from contextlib import contextmanager

import gevent
from gunicorn.workers.ggevent import GeventWorker


class GracefulGeventWorker(GeventWorker):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._idle: dict[
            object, socket.socket
        ] = {}  # greenlet waiting for its connection's next (not first) request → socket
        self._sockets: dict[object, socket.socket] = {}  # greenlet → the connection it serves
        self._served: set[object] = set()  # greenlets whose connection has had a request already

    def handle(self, listener, client, addr) -> None:
        me = gevent.getcurrent()
        self._sockets[me] = client
        try:
            super().handle(listener, client, addr)
        finally:
            self._sockets.pop(me, None)
            self._idle.pop(me, None)
            self._served.discard(me)

    @contextmanager
    def _idle_wait(self, me):
        client = self._sockets.get(me)
        if client is not None:
            self._idle[me] = client
        try:
            with gevent.Timeout(self.cfg.keepalive, False):
                yield
        finally:
            self._idle.pop(me, None)

    def timeout_ctx(self):
        me = gevent.getcurrent()
        if me not in self._served:
            # A new connection's first request is always served, shutting down or not: the
            # worker accepts for up to a second after shutdown starts, and that client has sent
            # (or is sending) its request to us. It is not "idle", so it is never swept.
            self._served.add(me)
            return gevent.Timeout(self.cfg.keepalive, False)
        if not self.alive:
            # Between two requests of a keep-alive connection while shutting down: gunicorn's
            # handle() catches StopIteration and closes the connection quietly. Raised here, not
            # inside the generator: there PEP 479 turns it into a RuntimeError, i.e. a 500.
            raise StopIteration("shutting down")
        return self._idle_wait(me)

    def init_signals(self) -> None:
        super().init_signals()
        # Ctrl-C in a terminal reaches every process of the group, workers too: a worker stops as
        # on SIGTERM (the master decides how fast), instead of exiting mid-request.
        signal.signal(signal.SIGINT, self.handle_exit)

    def run(self) -> None:
        gevent.spawn(self._close_idle_when_stopping)
        super().run()

    def _close_idle_when_stopping(self) -> None:
        while self.alive:
            gevent.sleep(0.2)
        waiters = getattr(getattr(self, "wsgi", None), "config", {}).get("JIT_WAITERS")
        if waiters is not None:
            waiters.stop()  # long-polls answer now with the status they have, instead of after their `wait`
        for client in list(self._idle.values()):
            try:
                client.shutdown(socket.SHUT_RDWR)  # its reader sees end-of-stream and closes quietly
            except OSError:
                pass
