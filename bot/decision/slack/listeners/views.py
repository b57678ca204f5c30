"""Modal submissions: the reason for a denial, the justification for breaking glass."""

from __future__ import annotations

import json

from slack_bolt import Ack, App

from bot.core.errors import JitError
from bot.wiring import Runtime
from bot.decision.slack.views.blocks import (
    BREAK_GLASS_MODAL,
    DENY_MODAL,
    DENY_REASON_BLOCK,
    DENY_REASON_INPUT,
    JUSTIFICATION_BLOCK,
    JUSTIFICATION_INPUT,
)


def register(app: App, rt: Runtime) -> None:
    def deny_submitted(ack: Ack, body: dict, view: dict) -> None:
        values = view.get("state", {}).get("values", {})
        reason = ((values.get(DENY_REASON_BLOCK) or {}).get(DENY_REASON_INPUT) or {}).get("value") or ""
        if not reason.strip():
            ack(response_action="errors", errors={DENY_REASON_BLOCK: "Please give a reason."})
            return
        try:
            meta = json.loads(view.get("private_metadata") or "{}")
        except ValueError:
            meta = {}
        user = body["user"]["id"]
        request_id = str(meta.get("id", ""))
        try:
            rt.access.deny(request_id, user, reason)
        except JitError as e:
            ack(response_action="errors", errors={DENY_REASON_BLOCK: e.message[:150]})
            return
        ack()

    def break_glass_submitted(ack: Ack, body: dict, view: dict) -> None:
        values = view.get("state", {}).get("values", {})
        field = (values.get(JUSTIFICATION_BLOCK) or {}).get(JUSTIFICATION_INPUT) or {}
        justification = field.get("value") or ""
        try:
            meta = json.loads(view.get("private_metadata") or "{}")
        except ValueError:
            meta = {}
        try:
            rt.access.break_glass(str(meta.get("id", "")), body["user"]["id"], justification)
        except JitError as e:
            ack(response_action="errors", errors={JUSTIFICATION_BLOCK: e.message[:150]})
            return
        ack()

    app.view(DENY_MODAL)(deny_submitted)
    app.view(BREAK_GLASS_MODAL)(break_glass_submitted)
