"""`timeout:<id>`: a pending request nobody decided becomes `timed_out`, never early."""

from __future__ import annotations

from bot.runtime import Runtime
from workers.queue.retry import RetryLater


def time_out(rt: Runtime, rid: str, token: str) -> None:
    wait_ms = rt.revokes.time_out(rid)
    if wait_ms > 0:
        raise RetryLater(wait_ms)
