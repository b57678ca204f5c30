"""Structured logs: one JSON object a line, with the request id whenever there is one."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token

from gunicorn.glogging import Logger as _GunicornBaseLogger

_STD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

#: Fields added to every line logged in this context (a job's or an HTTP request's request id).
#: Context variables are per thread and per greenlet, so gevent's concurrent requests do not mix.
_context: ContextVar[tuple[tuple[str, object], ...]] = ContextVar("jit_log_context", default=())


def push(**fields: object) -> Token:
    """Add fields to every log line from here on in this context; `pop(token)` undoes it."""
    merged = {**dict(_context.get()), **{k: v for k, v in fields.items() if v is not None}}
    return _context.set(tuple(merged.items()))


def pop(token: Token) -> None:
    _context.reset(token)


@contextmanager
def bind(**fields: object) -> Iterator[None]:
    token = push(**fields)
    try:
        yield
    finally:
        pop(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        out.update(dict(_context.get()))
        for k, v in record.__dict__.items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(out, default=str)


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # the HTTP libraries log request lines that may carry tokens in headers at DEBUG
    for noisy in ("urllib3", "slack_sdk", "slack_bolt", "rq.worker", "gunicorn.access"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


class GunicornLogger(_GunicornBaseLogger):
    """Gunicorn's own lines (boot, worker exits, timeouts) in the same JSON shape."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            for handler in logger.handlers:
                handler.setFormatter(JsonFormatter())
