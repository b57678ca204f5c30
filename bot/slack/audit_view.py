"""`/jit audit …`: who may read the trail, and the entries as Block Kit."""

from __future__ import annotations

from typing import Any

from bot.runtime import Runtime
from bot.slack.blocks import MAX_TEXT, clip, safe

DEFAULT_N = 20
MAX_N = 100


def may_read_audit(rt: Runtime, user: str) -> bool:
    if rt.access.is_auditor(user):
        return True
    return any(rt.access.is_approver(a, user) for a in rt.policy.actions)


def audit_answer(rt: Runtime, user: str, args: str) -> list[dict[str, Any]]:
    if not may_read_audit(rt, user):
        rt.audit.append("audit.read_refused", actor=user, outcome="refused", details={"args": args[:200]})
        return [_section("Sorry — only auditors and approvers can read the audit trail.")]
    n = DEFAULT_N
    if args.strip().isdigit():
        n = max(1, min(int(args.strip()), MAX_N))
    entries = rt.audit.latest(n)
    lines = [
        f"`{e.body['time']}` *{safe(e.body['event'], 40)}* {safe(e.body.get('request_id') or '', 20)} "
        f"{safe(e.body.get('actor') or '', 60)} {safe(e.body.get('outcome') or '', 20)}"
        for e in entries
    ]
    return _chunks(f"*Last {len(entries)} audit events*", lines)


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": clip(text, MAX_TEXT)}}


def _chunks(title: str, lines: list[str]) -> list[dict[str, Any]]:
    blocks = [_section(title)]
    buf = ""
    for line in lines:
        if len(buf) + len(line) + 1 > MAX_TEXT - 10:
            blocks.append(_section(buf))
            buf = ""
        buf += line + "\n"
    if buf:
        blocks.append(_section(buf))
    return blocks[:50]
