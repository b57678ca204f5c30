"""What listeners share: telling one user something privately, without blocking the click."""

from __future__ import annotations

import logging

from bot.wiring import Runtime
from workers.jobs.notify import notices

log = logging.getLogger("jit.slack")


def tell(rt: Runtime, channel: str | None, user: str, text: str) -> None:
    """An ephemeral message, sent by a worker through the due queue (so Slack's latency never
    holds a request); dropped if it could not go out within a minute."""
    notices.tell(rt, channel, user, text)


def click_channel(body: dict) -> str | None:
    return (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id")
