"""`/jit …` slash commands: help, status, audit, revoke — answered in the ack body (ephemeral)."""

from __future__ import annotations

import logging

from slack_bolt import Ack, App

from bot.core.errors import JitError
from bot.store.refusals import record_refusal
from bot.wiring import Runtime
from bot.decision.slack.views import answers
from bot.decision.slack.views.text import code

log = logging.getLogger("jit.slack")

USAGE = (
    "*jit* — just-in-time access for pipelines\n"
    "• `/jit status` — pending requests and active grants\n"
    "• `/jit status &lt;id&gt;` — one request in full, with its history\n"
    "• `/jit audit [N]` — the last N audit events (auditors and approvers; default 20, max 100); "
    "filters: `&lt;request-id&gt;`, `@user`, `action:&lt;name&gt;`, `since:2h`, `break-glass`\n"
    "• `/jit revoke &lt;id&gt;` — end an active grant now (approvers)\n"
    "• `/jit help` — this text"
)


def answer(rt: Runtime, user: str, text: str) -> dict:
    """The ack body for one `/jit` command: {text, blocks?}. Never raises a JitError."""
    sub, _, rest = text.strip().partition(" ")
    sub, rest = sub.lower(), rest.strip()
    try:
        if sub == "status":
            if rest:
                req = rt.store.get(rest.split()[0])
                if req is not None and not rt.access.may_view(req, user):
                    record_refusal(
                        rt.redis, rt.audit, "status.refused", actor=user, request_id=req.id,
                        action=req.action, details={"why": "not an approver, auditor or the requester"},
                    )
                    return {"text": "Only this request's approvers, auditors and requester can see it."}
            blocks = answers.status(rt, rest) if rest else answers.overview(rt, user)
            return {"text": "jit status", "blocks": blocks}
        if sub == "audit":
            return {"text": "jit audit", "blocks": answers.audit(rt, user, rest)}
        if sub == "revoke":
            if not rest:
                return {
                    "text": "Usage: `/jit revoke &lt;id&gt;` — the request id is in its Slack message."
                }
            req = rt.access.revoke_by_approver(rest.split()[0], user)
            return {
                "text": f"Revoking {code(req.id, 64)} ({code(req.action, 64)}) now; its message updates when it is done."
            }
        if sub in ("", "help"):
            return {"text": USAGE}
        return {"text": f"I don't know {code('/jit ' + sub, 40)}.\n{USAGE}"}
    except JitError as e:
        return {"text": e.message}


def register(app: App, rt: Runtime) -> None:
    @app.command("/jit")
    def jit_command(ack: Ack, command: dict) -> None:
        try:
            body = answer(rt, command["user_id"], command.get("text") or "")
        except Exception:  # noqa: BLE001 - Slack must still get an answer within 3 s
            log.exception("/jit failed")
            body = {"text": "Sorry — jit could not answer just now. Please try again in a moment."}
        ack(response_type="ephemeral", **body)
