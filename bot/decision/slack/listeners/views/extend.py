"""The Extend modal's submission: applied at once, or an approval round on the request's message."""

from __future__ import annotations

from slack_bolt import Ack, BoltContext

from bot.core.errors import JitError
from bot.decision.slack.listeners.common import tell
from bot.decision.slack.listeners.views.metadata import field, request_id
from bot.decision.slack.views.blocks import EXTEND_REASON_BLOCK, EXTEND_REASON_INPUT, EXTEND_TTL_BLOCK, EXTEND_TTL_INPUT


def extend_submitted(ack: Ack, body: dict, view: dict, context: BoltContext) -> None:
    rt = context["jit"]
    user = body["user"]["id"]
    ttl = field(view, EXTEND_TTL_BLOCK, EXTEND_TTL_INPUT).strip() or None
    reason = field(view, EXTEND_REASON_BLOCK, EXTEND_REASON_INPUT)
    try:
        done = rt.extensions.ask_as_approver(request_id(view), user, ttl, reason)
    except JitError as e:
        ack(response_action="errors", errors={EXTEND_TTL_BLOCK: e.message[:150]})
        return
    ack()
    if not done.applied:
        tell(rt, done.request.channel, user, "Your extension waits for approval on the request's message.")
