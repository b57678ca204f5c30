"""Deny: may this user deny? Then the reason modal opens (the denial itself is its submission)."""

from __future__ import annotations

from slack_bolt import Ack, BoltContext
from slack_sdk import WebClient

from bot.core.errors import JitError
from bot.decision.slack.listeners.common import click_channel, clicked, tell
from bot.decision.slack.views.blocks import deny_modal


def deny(ack: Ack, body: dict, client: WebClient, context: BoltContext) -> None:
    ack()
    rt = context["jit"]
    user, request_id = clicked(body)
    try:
        req = rt.decisions.check_can_deny(request_id, user)
    except JitError as e:
        tell(rt, click_channel(body), user, e.message)
        return
    message_ts = (body.get("container") or {}).get("message_ts")
    client.views_open(trigger_id=body["trigger_id"], view=deny_modal(req, click_channel(body), message_ts))
