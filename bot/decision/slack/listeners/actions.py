"""Button clicks: Approve, Deny (opens the reason modal), Break glass (opens the
justification modal), Revoke now."""

from __future__ import annotations

from slack_bolt import Ack, App
from slack_sdk import WebClient

from bot.core.clock import human
from bot.core.errors import JitError
from bot.wiring import Runtime
from bot.decision.slack.views.blocks import APPROVE, BREAK_GLASS, DENY, REVOKE, break_glass_modal, deny_modal
from bot.decision.slack.listeners.common import click_channel, tell


def register(app: App, rt: Runtime) -> None:
    def approve(ack: Ack, body: dict) -> None:
        ack()
        user = body["user"]["id"]
        request_id = body["actions"][0]["value"]
        try:
            out = rt.access.approve(request_id, user)
        except JitError as e:
            tell(rt, click_channel(body), user, e.message)
            return
        if out.result == "recorded":
            req = rt.store.get(request_id)
            left = max(rt.access.approvals_required(req) - (out.count or 0), 0) if req else 0
            tell(rt, click_channel(body), user, f"Thanks — your approval is recorded; {left} more needed.")

    def deny(ack: Ack, body: dict, client: WebClient) -> None:
        ack()
        user = body["user"]["id"]
        request_id = body["actions"][0]["value"]
        try:
            req = rt.access.check_can_deny(request_id, user)
        except JitError as e:
            tell(rt, click_channel(body), user, e.message)
            return
        message_ts = (body.get("container") or {}).get("message_ts")
        client.views_open(trigger_id=body["trigger_id"], view=deny_modal(req, click_channel(body), message_ts))

    def break_glass(ack: Ack, body: dict, client: WebClient) -> None:
        ack()
        user = body["user"]["id"]
        request_id = body["actions"][0]["value"]
        try:
            req = rt.access.check_can_break_glass(request_id, user)
        except JitError as e:
            tell(rt, click_channel(body), user, e.message)
            return
        bg = rt.access.policy_of(req).break_glass_for(req.action)
        max_ttl = human(bg.max_ttl) if bg else ""
        message_ts = (body.get("container") or {}).get("message_ts")
        client.views_open(
            trigger_id=body["trigger_id"],
            view=break_glass_modal(req, click_channel(body), message_ts, max_ttl),
        )

    def revoke(ack: Ack, body: dict) -> None:
        ack()
        user = body["user"]["id"]
        request_id = body["actions"][0]["value"]
        try:
            rt.access.revoke_by_approver(request_id, user)
        except JitError as e:
            tell(rt, click_channel(body), user, e.message)

    app.action(APPROVE)(approve)
    app.action(DENY)(deny)
    app.action(REVOKE)(revoke)
    app.action(BREAK_GLASS)(break_glass)
