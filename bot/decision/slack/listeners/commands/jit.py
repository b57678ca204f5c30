"""`/jit`: one command, its subcommands, and an answer within Slack's 3 s whatever happens."""

from __future__ import annotations

import logging

from slack_bolt import Ack, BoltContext

from bot.core.errors import JitError
from bot.decision.slack.listeners.commands import audit, status
from bot.decision.slack.views.text import code
from bot.runtime import Runtime

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


def jit_command(ack: Ack, command: dict, context: BoltContext) -> None:
    try:
        body = answer(context["jit"], command["user_id"], command.get("text") or "")
    except Exception:  # noqa: BLE001 - Slack must still get an answer within 3 s
        log.exception("/jit failed")
        body = {"text": "Sorry — jit could not answer just now. Please try again in a moment."}
    ack(response_type="ephemeral", **body)


def answer(rt: Runtime, user: str, text: str) -> dict:
    """The ack body for one `/jit` command: {text, blocks?}. Never raises a JitError."""
    sub, _, rest = text.strip().partition(" ")
    sub, rest = sub.lower(), rest.strip()
    try:
        if sub == "status":
            return status.answer(rt, user, rest)
        if sub == "audit":
            return {"text": "jit audit", "blocks": audit.answer(rt, user, rest)}
        if sub == "revoke":
            if not rest:
                return {"text": "Usage: `/jit revoke &lt;id&gt;` — the request id is in its Slack message."}
            req = rt.revokes.revoke_by_approver(rest.split()[0], user)
            what = f"{code(req.id, 64)} ({code(req.action, 64)})"
            return {"text": f"Revoking {what} now; its message updates when it is done."}
        if sub in ("", "help"):
            return {"text": USAGE}
        return {"text": f"I don't know {code('/jit ' + sub, 40)}.\n{USAGE}"}
    except JitError as e:
        return {"text": e.message}
