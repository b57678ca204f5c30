"""Release now ("I'm done"): the requester or an approver ends an active grant early."""

from __future__ import annotations

from slack_bolt import Ack, BoltContext

from bot.core.errors import JitError
from bot.decision.slack.listeners.common import click_channel, clicked, tell


def release(ack: Ack, body: dict, context: BoltContext) -> None:
    ack()
    rt = context["jit"]
    user, request_id = clicked(body)
    try:
        released = rt.revokes.release_by_person(request_id, user)
    except JitError as e:
        tell(rt, click_channel(body), user, e.message)
        return
    if not released:
        tell(rt, click_channel(body), user, "This grant has already ended; nothing to release.")
