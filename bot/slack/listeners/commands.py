"""`/jit …` slash commands: help, status, revoke (and audit, see bot/slack/commands_audit)."""

from __future__ import annotations

from slack_bolt import Ack, App

from bot.domain.errors import JitError
from bot.runtime import Runtime
from bot.slack import answers

USAGE = (
    "*jit* — just-in-time access for pipelines\n"
    "• `/jit status` — pending requests and active grants\n"
    "• `/jit status <id>` — one request in full, with its history\n"
    "• `/jit audit [N]` — the last N audit events (auditors and approvers); filters: "
    "`<request-id>`, `@user`, `action:<name>`, `since:2h`, `break-glass`\n"
    "• `/jit revoke <id>` — end an active grant now (approvers)\n"
    "• `/jit help` — this text"
)


def register(app: App, rt: Runtime) -> None:
    @app.command("/jit")
    def jit_command(ack: Ack, command: dict) -> None:
        text = (command.get("text") or "").strip()
        sub, _, rest = text.partition(" ")
        sub = sub.lower()
        user = command["user_id"]
        rest = rest.strip()
        try:
            if sub == "status":
                blocks = answers.status(rt, rest) if rest else answers.overview(rt)
                ack(blocks=blocks, text="jit status")
            elif sub == "audit":
                blocks = answers.audit(rt, user, rest)
                ack(blocks=blocks, text="jit audit")
            elif sub == "revoke" and rest:
                req = rt.access.revoke_by_approver(rest.split()[0], user)
                ack(text=f"Revoking `{req.id}` ({req.action}) now.")
            else:
                ack(text=USAGE)
        except JitError as e:
            ack(text=e.message)
