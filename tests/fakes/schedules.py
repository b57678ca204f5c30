"""What the on-call fakes share: schedules made of layers of shifts, and a small JSON HTTP server.

A schedule's final on-call at an instant is what its layers say, the last layer that has a shift
then winning (an override or a later rotation layered on top: a hand-over between layers). Time
is real time unless a request names one (PagerDuty `since`, Opsgenie `date`).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Shift:
    user: str
    start: float  # epoch seconds
    end: float | None = None  # None: open-ended

    def covers(self, t: float) -> bool:
        return self.start <= t and (self.end is None or t < self.end)


@dataclass
class Schedule:
    id: str
    name: str
    #: Layers, lowest first; in each, the shifts of one rotation.
    layers: list[list[Shift]] = field(default_factory=list)

    def shift_at(self, t: float) -> Shift | None:
        for layer in reversed(self.layers):
            for shift in layer:
                if shift.covers(t):
                    return shift
        return None

    def layer(self, index: int) -> list[Shift]:
        while len(self.layers) <= index:
            self.layers.append([])
        return self.layers[index]


def iso(t: float | None) -> str | None:
    return None if t is None else datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(value: str | None) -> float:
    if not value:
        return time.time()
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]


class JsonServer:
    """A threaded HTTP server on 127.0.0.1 that hands each GET to `answer` and records it."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        #: When set, every request is answered with this HTTP status (an outage).
        self.failing: int | None = None
        #: When set, every answer is held this many seconds first (a provider that hangs).
        self.stall: float = 0.0
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._lock = threading.Lock()

    def answer(self, req: Request) -> tuple[int, Any]:
        raise NotImplementedError

    def start(self) -> JsonServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                req = Request("GET", url.path, parse_qs(url.query), {k.lower(): v for k, v in self.headers.items()})
                if owner.stall:
                    owner._stopping.wait(owner.stall)
                with owner._lock:
                    owner.requests.append(req)
                    failing = owner.failing
                    status, body = (failing, {"error": "unavailable"}) if failing else owner.answer(req)
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        """Gone: connections are refused from now on."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> JsonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
