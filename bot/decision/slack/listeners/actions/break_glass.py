"""Break glass: may this user break glass? Then the justification modal opens."""

from __future__ import annotations

from slack_bolt import Ack, BoltContext
from slack_sdk import WebClient

from bot.core.clock import human
from bot.core.errors import JitError
from bot.decision.slack.listeners.common import click_channel, clicked, tell
from bot.decision.slack.views.blocks import break_glass_modal


def break_glass(ack: Ack, body: dict, client: WebClient, context: BoltContext) -> None:
    ack()
    rt = context["jit"]
    user, request_id = clicked(body)
    try:
        req = rt.decisions.check_can_break_glass(request_id, user)
    except JitError as e:
        tell(rt, click_channel(body), user, e.message)
        return
    max_ttl = human(rt.rules.break_glass_max_ttl(req))
    message_ts = (body.get("container") or {}).get("message_ts")
    client.views_open(
        trigger_id=body["trigger_id"], view=break_glass_modal(req, click_channel(body), message_ts, max_ttl)
    )
