"""What listeners share: telling one user something privately, without blocking the click."""

from __future__ import annotations

import logging

from bot.runtime import Runtime

log = logging.getLogger("jit.slack")


def tell(rt: Runtime, channel: str | None, user: str, text: str) -> None:
    """An ephemeral message, sent by a worker (so Slack's latency never holds a request)."""
    from workers.expiry import SLACK_QUEUE

    if not channel:
        channel = user  # DM fallback (App Home clicks have no channel)
    rt.dispatcher.queues[SLACK_QUEUE].enqueue_call(
        "bot.slack.messages.post_ephemeral",
        args=(channel, user, text),
        result_ttl=0,
        failure_ttl=3600,
        ttl=600,
    )


def click_channel(body: dict) -> str | None:
    return (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id")
