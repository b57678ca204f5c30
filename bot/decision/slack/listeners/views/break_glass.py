"""The break-glass modal's submission: a written justification, then the approval alone."""

from __future__ import annotations

from slack_bolt import Ack, BoltContext

from bot.core.errors import JitError
from bot.decision.slack.listeners.views.metadata import field, request_id
from bot.decision.slack.views.blocks import JUSTIFICATION_BLOCK, JUSTIFICATION_INPUT


def break_glass_submitted(ack: Ack, body: dict, view: dict, context: BoltContext) -> None:
    justification = field(view, JUSTIFICATION_BLOCK, JUSTIFICATION_INPUT)
    try:
        context["jit"].decisions.break_glass(request_id(view), body["user"]["id"], justification)
    except JitError as e:
        ack(response_action="errors", errors={JUSTIFICATION_BLOCK: e.message[:150]})
        return
    ack()
