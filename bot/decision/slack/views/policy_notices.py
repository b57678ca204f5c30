"""The audit channel's lines about policies: one loaded (what changed), one rejected (why)."""

from __future__ import annotations

from typing import Any

from bot.core.policy.policy import Policy
from bot.decision.slack.views.text import (
    MAX_MESSAGE_TEXT,
    code,
    code_text,
    fit,
    is_slack_id,
    literal,
    mention,
    width,
)

MAX_ERRORS_POSTED = 20


def _who(label: str) -> str:
    """`U…`, `<env>:U…` or `break-glass:U…` (see policy_diff) as a mention and its scope."""
    scope, _, ident = label.rpartition(":")
    if not (scope and is_slack_id(ident)):
        return mention(label)
    return f"{mention(ident)} ({code(scope, 80)})"


def describe_changes(policy: Policy, previous_sha: str | None, diff: dict[str, Any], trigger: str) -> str:
    """The audit channel's line about a newly loaded policy."""
    head = (
        f":scroll: *Policy loaded* ({literal(trigger, 20)}) from {code(policy.source, 300)} — sha256 "
        f"{code(policy.sha256[:16], 16)}"
    )
    if diff.get("first_load") or not previous_sha:
        return fit(f"{head}: {len(policy.actions)} action(s), {len(policy.pipelines)} pipeline(s).", MAX_MESSAGE_TEXT)
    lines = [f"{head} (was {code(previous_sha[:16], 16)})"]

    def names(items: list[str]) -> str:
        return ", ".join(code(i, 64) for i in items)

    if diff["actions_added"]:
        lines.append(f"• actions added: {names(diff['actions_added'])}")
    if diff["actions_removed"]:
        lines.append(f"• actions removed: {names(diff['actions_removed'])}")
    for action, entry in diff["approvers"].items():
        if entry.get("added"):
            lines.append(f"• approvers added to {code(action, 64)}: " + ", ".join(_who(x) for x in entry["added"]))
        if entry.get("removed"):
            lines.append(
                f"• approvers removed from {code(action, 64)}: " + ", ".join(_who(x) for x in entry["removed"])
            )
    for action, fields in diff["changed"].items():
        lines.append(f"• {code(action, 64)} changed: {', '.join(code(f, 40) for f in fields)}")
    if diff["pipelines_added"]:
        lines.append(f"• pipelines added: {names(diff['pipelines_added'])}")
    if diff["pipelines_removed"]:
        lines.append(f"• pipelines removed: {names(diff['pipelines_removed'])}")
    if "auditors" in diff:
        a = diff["auditors"]
        lines.append(
            "• auditors: " + ", ".join([f"+{_who(x)}" for x in a["added"]] + [f"−{_who(x)}" for x in a["removed"]])
        )
    if len(lines) == 1:
        lines.append("• no change to actions, approvers or pipelines (formatting or comments only)")
    return fit("\n".join(lines), MAX_MESSAGE_TEXT)


# ------------------------------------------------------------------------- the reloader


def describe_rejection(source: str, sha: str | None, in_force: str, errors: list[str], trigger: str) -> str:
    shown = errors[:MAX_ERRORS_POSTED]
    more = f"\n… and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
    # one line per error (an error may quote the file: no backtick in it can close the block)
    body = "\n".join(code_text(e, 300) or "—" for e in shown)
    head = (
        f":warning: *Policy file rejected* ({literal(trigger, 20)}): {code(source, 300)}"
        + (f" (sha256 {code(sha[:16], 16)})" if sha else "")
        + f" has {len(errors)} error(s); the policy in force stays ({code(in_force[:16], 16)}).\n"
    )
    return head + f"```{fit(body + more, MAX_MESSAGE_TEXT - width(head) - 6)}```"
