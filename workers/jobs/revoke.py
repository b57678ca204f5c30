"""`expire:<id>` and `revoke:<id>`: end a grant at the backend, never early (bot/revoke/service.py)."""

from __future__ import annotations

from bot.runtime import Runtime
from workers.queue.retry import RetryLater


def expire(rt: Runtime, rid: str, token: str) -> None:
    wait_ms = rt.revokes.expire(rid, rt.backend_for)
    if wait_ms > 0:
        raise RetryLater(wait_ms)  # never early


def revoke(rt: Runtime, rid: str, token: str) -> None:
    rt.revokes.complete(rid, rt.backend_for)
