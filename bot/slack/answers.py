"""Answers to `/jit status`, as Block Kit (pure rendering over store and audit reads)."""

from __future__ import annotations

from typing import Any

from bot.domain import keys
from bot.domain.clock import human, now
from bot.domain.requests import AccessRequest, Status
from bot.runtime import Runtime
from bot.slack.audit_view import chunk_lines, event_line
from bot.slack.blocks import MAX_TEXT, clip, mention, safe, slack_date, status_line

MAX_BLOCKS = 50
LIST_CAP = 20  # requests shown per list; the rest are counted
OPEN_READ = 1000  # open requests read for one overview
HISTORY_CAP = 60  # events shown with one request


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": clip(text, MAX_TEXT)}}


def _context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [{"type": "mrkdwn", "text": clip(text, MAX_TEXT)}]}


def pending_line(r: AccessRequest) -> str:
    waiting = " (approved, issuing…)" if r.status == Status.APPROVED else ""
    return (
        f"`{r.id}` *{safe(r.action, 64)}* · {safe(r.pipeline, 64)} · "
        f"{len(r.approvals)} of {r.approvals_required} approvals{waiting} · "
        f"{human(now() - r.created_at)} ago\n> {safe(r.reason, 200)}"
    )


def active_line(r: AccessRequest) -> str:
    left = human(r.expires_at - now()) + " left" if r.expires_at else "no expiry recorded"
    return f"`{r.id}` *{safe(r.action, 64)}* · {safe(r.pipeline, 64)} · {left}"


def overview(rt: Runtime) -> list[dict[str, Any]]:
    """Pending requests and active grants, newest first, each list capped with a count of the rest."""
    total_open = rt.redis.zcard(keys.open_requests())
    reqs = rt.store.get_many(rt.store.open_ids(limit=OPEN_READ))
    unread = max(total_open - OPEN_READ, 0)
    pending = [r for r in reqs if r.status in (Status.PENDING, Status.APPROVED)]
    active = [r for r in reqs if r.status == Status.ACTIVE]
    if not pending and not active and not unread:
        return [_section("Nothing pending and no active grants.")]
    blocks: list[dict[str, Any]] = [_section(f"*Pending* ({len(pending)})")]
    blocks += [_section(pending_line(r)) for r in pending[:LIST_CAP]]
    if len(pending) > LIST_CAP:
        blocks.append(_context(f"…and {len(pending) - LIST_CAP} more pending (oldest not shown)"))
    blocks.append({"type": "divider"})
    blocks.append(_section(f"*Active grants* ({len(active)})"))
    blocks += [_section(active_line(r)) for r in active[:LIST_CAP]]
    if len(active) > LIST_CAP:
        blocks.append(_context(f"…and {len(active) - LIST_CAP} more active (oldest not shown)"))
    if unread:
        blocks.append(_context(f"…and {unread} older open requests not counted above"))
    blocks.append(_context("Newest first · `/jit status <id>` for one request in full"))
    return blocks[:MAX_BLOCKS]


def status(rt: Runtime, request_id: str) -> list[dict[str, Any]]:
    """One request in full, with its history from the audit trail."""
    rid = request_id.split()[0]
    r = rt.store.get(rid)
    if r is None:
        return [
            _section(
                f"No request `{safe(rid, 64)}` (unknown, or finished long enough ago to be forgotten)."
            )
        ]
    lines = [
        f"*Request* `{r.id}` — *{safe(r.action, 64)}* for {safe(r.pipeline, 64)}",
        f"*Reason:* {safe(r.reason, 500)}",
        f"*Requested by:* {safe(r.requested_by or '—', 200)}"
        + (" :lock: _verified_" if r.verified else "")
        + f" · *TTL:* {human(r.ttl)}",
        f"*Created:* {slack_date(r.created_at)} ({human(now() - r.created_at)} ago)",
        f"*Approvals:* {len(r.approvals)} of {r.approvals_required}"
        + (" — " + ", ".join(mention(u) for u in r.approved_by) if r.approvals else ""),
        status_line(r),
    ]
    if r.status == Status.PENDING:
        lines.append(f"*Times out:* {slack_date(r.pending_until)}")
    if r.issued_at:
        lines.append(f"*Issued:* {slack_date(r.issued_at)}")
    blocks = [_section("\n".join(lines))]
    if r.context:
        ctx = " · ".join(f"*{safe(k, 40)}:* {safe(v, 200)}" for k, v in sorted(r.context.items()))
        blocks.append(_context(ctx))
    history = rt.audit.entries_for_request(r.id, limit=HISTORY_CAP)
    if history:
        title = "*History*" + (
            f" (latest {HISTORY_CAP}; `/jit audit {r.id} 100` for more)"
            if len(history) >= HISTORY_CAP
            else ""
        )
        blocks.append(_section(title))
        lines = [event_line(e.body) for e in history]
        blocks += chunk_lines(lines, MAX_BLOCKS - len(blocks))
    return blocks[:MAX_BLOCKS]


def audit(rt: Runtime, user: str, args: str) -> list[dict[str, Any]]:
    from bot.slack.audit_view import audit_answer

    return audit_answer(rt, user, args)
