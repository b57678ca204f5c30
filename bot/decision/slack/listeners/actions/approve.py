"""Approve: one atomic approval (of a request, or of the extension its active grant waits for); a
refusal is told to the clicker privately."""

from __future__ import annotations

from slack_bolt import Ack, BoltContext

from bot.core.errors import JitError
from bot.core.model import Status
from bot.decision.slack.listeners.common import click_channel, clicked, tell
from bot.decision.slack.middleware import LOADED


def approve(ack: Ack, body: dict, context: BoltContext) -> None:
    ack()
    rt = context["jit"]
    user, request_id = clicked(body)
    req = (context.get(LOADED) or {}).get(request_id) or rt.store.get(request_id)
    if req is not None and req.status == Status.ACTIVE and rt.extensions.round(req) is not None:
        approve_extension(rt, body, user, request_id)
        return
    try:
        out = rt.decisions.approve(request_id, user, loaded=req)
    except JitError as e:
        tell(rt, click_channel(body), user, e.message)
        return
    if out.result == "recorded":
        req = rt.store.get(request_id)
        left = rt.decisions.approvals_left(req, out.count or 0) if req else 0
        tell(rt, click_channel(body), user, f"Thanks — your approval is recorded; {left} more needed.")


def approve_extension(rt, body: dict, user: str, request_id: str) -> None:
    """Approve on an active grant's message approves the extension waiting there."""
    try:
        out, rnd = rt.extensions.approve(request_id, user)
    except JitError as e:
        tell(rt, click_channel(body), user, e.message)
        return
    if out.result == "recorded":
        tell(
            rt,
            click_channel(body),
            user,
            f"Thanks — your approval of the extension is recorded; {rnd.left} more needed.",
        )
