"""Revoke now: an approver ends an active grant at once."""

from __future__ import annotations

from slack_bolt import Ack, BoltContext

from bot.core.errors import JitError
from bot.decision.slack.listeners.common import click_channel, clicked, tell


def revoke(ack: Ack, body: dict, context: BoltContext) -> None:
    ack()
    rt = context["jit"]
    user, request_id = clicked(body)
    try:
        rt.revokes.revoke_by_approver(request_id, user)
    except JitError as e:
        tell(rt, click_channel(body), user, e.message)
