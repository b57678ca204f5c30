"""Extend: may this user extend this grant? Then the modal asks how long and why."""

from __future__ import annotations

from slack_bolt import Ack, BoltContext
from slack_sdk import WebClient

from bot.core.clock import human
from bot.core.errors import JitError
from bot.decision.slack.listeners.common import click_channel, clicked, tell
from bot.decision.slack.views.blocks import extend_modal


def extend(ack: Ack, body: dict, client: WebClient, context: BoltContext) -> None:
    ack()
    rt = context["jit"]
    user, request_id = clicked(body)
    try:
        req = rt.extensions.check_can_ask(request_id, user)
    except JitError as e:
        tell(rt, click_channel(body), user, e.message)
        return
    default = human(rt.extensions.default_ttl(req)).replace(" ", "")
    message_ts = (body.get("container") or {}).get("message_ts")
    client.views_open(trigger_id=body["trigger_id"], view=extend_modal(req, default, click_channel(body), message_ts))
