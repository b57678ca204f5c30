"""Someone joined or left a user group (or it was disabled): membership used for approvals is
looked up afresh at the next click, not up to a minute later."""

from __future__ import annotations

from slack_bolt import BoltContext


def members_changed(event: dict, context: BoltContext) -> None:
    group = event.get("subteam_id")
    if isinstance(group, str) and group:
        context["jit"].directory.forget(group)


def group_changed(event: dict, context: BoltContext) -> None:
    group = (event.get("subteam") or {}).get("id")
    if isinstance(group, str) and group:
        context["jit"].directory.forget(group)
