"""`reissue:<id>`: after an extension, the backend hears the window's new end (bot/grant/extend.py)."""

from __future__ import annotations

from bot.runtime import Runtime
from workers.queue.retry import RetryLater


def reissue(rt: Runtime, rid: str, token: str) -> None:
    wait_ms = rt.extensions.reissue(rid, rt.backend_for)
    if wait_ms > 0:
        raise RetryLater(wait_ms)  # extended again meanwhile: tell the backend the latest end
