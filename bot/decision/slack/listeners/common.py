"""What listeners share: telling one user something privately, without blocking the click."""

from __future__ import annotations

from bot.runtime import Runtime


def tell(rt: Runtime, channel: str | None, user: str, text: str) -> None:
    """An ephemeral message, sent by a worker through the due queue (so Slack's latency never
    holds a request); dropped if it could not go out within a minute."""
    rt.notices.tell(channel, user, text)


def click_channel(body: dict) -> str | None:
    return (body.get("channel") or {}).get("id") or (body.get("container") or {}).get("channel_id")


def clicked(body: dict) -> tuple[str, str]:
    """(who clicked, the request id the button names)."""
    return body["user"]["id"], body["actions"][0]["value"]
