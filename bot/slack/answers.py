"""Answers to slash commands, as Block Kit (pure rendering over store/audit reads)."""

from __future__ import annotations

from typing import Any

from bot.domain.clock import human, now
from bot.domain.requests import Status
from bot.runtime import Runtime
from bot.slack.blocks import MAX_TEXT, clip, mention, safe, status_line

MAX_BLOCKS = 50
LIST_CAP = 20


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": clip(text, MAX_TEXT)}}


def overview(rt: Runtime) -> list[dict[str, Any]]:
    reqs = rt.store.get_many(rt.store.open_ids(limit=500))
    pending = [r for r in reqs if r.status in (Status.PENDING, Status.APPROVED)]
    active = [r for r in reqs if r.status == Status.ACTIVE]
    t = now()
    blocks: list[dict[str, Any]] = [_section(f"*Pending* ({len(pending)})")]
    for r in pending[:LIST_CAP]:
        blocks.append(
            _section(
                f"`{r.id}` *{safe(r.action, 64)}* · {safe(r.pipeline, 64)} · {len(r.approvals)} of "
                f"{r.approvals_required} · {human(t - r.created_at)} ago\n> {safe(r.reason, 200)}"
            )
        )
    if len(pending) > LIST_CAP:
        blocks.append(_section(f"…and {len(pending) - LIST_CAP} more pending"))
    blocks.append({"type": "divider"})
    blocks.append(_section(f"*Active grants* ({len(active)})"))
    for r in active[:LIST_CAP]:
        left = (r.expires_at - t) if r.expires_at else None
        blocks.append(
            _section(
                f"`{r.id}` *{safe(r.action, 64)}* · {safe(r.pipeline, 64)} · "
                f"{human(left) + ' left' if left else ''}"
            )
        )
    if len(active) > LIST_CAP:
        blocks.append(_section(f"…and {len(active) - LIST_CAP} more active"))
    if not pending and not active:
        blocks = [_section("Nothing pending and no active grants.")]
    return blocks[:MAX_BLOCKS]


def status(rt: Runtime, request_id: str) -> list[dict[str, Any]]:
    rid = request_id.split()[0]
    r = rt.store.get(rid)
    if r is None:
        return [_section(f"No request `{safe(rid, 64)}`.")]
    lines = [
        f"*Request* `{r.id}` — *{safe(r.action, 64)}* for {safe(r.pipeline, 64)}",
        f"*Reason:* {safe(r.reason, 500)}",
        f"*Requested by:* {safe(r.requested_by or '—', 200)} · *TTL:* {human(r.ttl)}",
        f"*Approvals:* {len(r.approvals)} of {r.approvals_required}"
        + (" — " + ", ".join(mention(u) for u in r.approved_by) if r.approvals else ""),
        status_line(r),
    ]
    blocks = [_section("\n".join(lines))]
    history = [e for e in rt.audit.entries_for_request(rid, limit=40)] if hasattr(rt.audit, "entries_for_request") else []
    if history:
        text = "\n".join(
            f"`{e.body['time'][11:23]}` {safe(e.body['event'], 40)} · {safe(e.body.get('actor') or '', 60)}"
            for e in history
        )
        blocks.append(_section("*History*\n" + text))
    return blocks


def audit(rt: Runtime, user: str, args: str) -> list[dict[str, Any]]:
    from bot.slack.audit_view import audit_answer

    return audit_answer(rt, user, args)
