"""The deny modal's submission: a reason is required; the denial is one atomic transition."""

from __future__ import annotations

from slack_bolt import Ack, BoltContext

from bot.core.errors import JitError
from bot.decision.slack.listeners.views.metadata import field, request_id
from bot.decision.slack.views.blocks import DENY_REASON_BLOCK, DENY_REASON_INPUT


def deny_submitted(ack: Ack, body: dict, view: dict, context: BoltContext) -> None:
    reason = field(view, DENY_REASON_BLOCK, DENY_REASON_INPUT)
    if not reason.strip():
        ack(response_action="errors", errors={DENY_REASON_BLOCK: "Please give a reason."})
        return
    try:
        context["jit"].decisions.deny(request_id(view), body["user"]["id"], reason)
    except JitError as e:
        ack(response_action="errors", errors={DENY_REASON_BLOCK: e.message[:150]})
        return
    ack()
