"""Answers to `/jit status`, as Block Kit (pure: the listener reads the store and passes values in)."""

from __future__ import annotations

from typing import Any

from bot.core.clock import human, now
from bot.core.model import AccessRequest, Status
from bot.decision.slack.views.audit_view import chunk_lines, event_line
from bot.decision.slack.views.blocks import RUN_LINK_LABEL, status_line
from bot.decision.slack.views.text import (
    MAX_MESSAGE_BLOCKS,
    code,
    code_text,
    context,
    link,
    literal,
    mention,
    section,
)
from bot.decision.slack.views.text import date as slack_date

MAX_BLOCKS = MAX_MESSAGE_BLOCKS
LIST_CAP = 20  # requests shown per list; the rest are counted
HISTORY_CAP = 60  # events shown with one request


def pending_line(r: AccessRequest) -> str:
    waiting = " (approved, issuing…)" if r.status == Status.APPROVED else ""
    return (
        f"{code(r.id, 64)} {code(r.action, 64)} · {code(r.pipeline, 64)} · "
        f"{len(r.approvals)} of {r.approvals_required} approvals{waiting} · "
        f"{human(now() - r.created_at)} ago\n> {literal(r.reason, 200) or '—'}"
    )


def active_line(r: AccessRequest) -> str:
    left = human(r.expires_at - now()) + " left" if r.expires_at else "no expiry recorded"
    return f"{code(r.id, 64)} {code(r.action, 64)} · {code(r.pipeline, 64)} · {left}"


def overview(reqs: list[AccessRequest], unread: int) -> list[dict[str, Any]]:
    """Pending requests and active grants, newest first, each list capped with a count of the rest
    (`unread`: open requests too many to read)."""
    pending = [r for r in reqs if r.status in (Status.PENDING, Status.APPROVED)]
    active = [r for r in reqs if r.status == Status.ACTIVE]
    if not pending and not active and not unread:
        return [section("Nothing pending and no active grants.")]
    blocks: list[dict[str, Any]] = [section(f"*Pending* ({len(pending)})")]
    blocks += [section(pending_line(r)) for r in pending[:LIST_CAP]]
    if len(pending) > LIST_CAP:
        blocks.append(context(f"…and {len(pending) - LIST_CAP} more pending (oldest not shown)"))
    blocks.append({"type": "divider"})
    blocks.append(section(f"*Active grants* ({len(active)})"))
    blocks += [section(active_line(r)) for r in active[:LIST_CAP]]
    if len(active) > LIST_CAP:
        blocks.append(context(f"…and {len(active) - LIST_CAP} more active (oldest not shown)"))
    if unread:
        blocks.append(context(f"…and {unread} older open requests not counted above"))
    blocks.append(context("Newest first · `/jit status &lt;id&gt;` for one request in full"))
    return blocks[:MAX_BLOCKS]


def not_found(request_id: str) -> list[dict[str, Any]]:
    return [section(f"No request {code(request_id, 64)} (unknown, or finished long enough ago to be forgotten).")]


def status(r: AccessRequest, history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One request in full, with its history (audit entry bodies, oldest first)."""
    lines = [
        f"*Request* {code(r.id, 64)} — {code(r.action, 64)} for {code(r.pipeline, 64)}",
        f"*Reason:* {literal(r.reason, 500) or '—'}",
        f"*Requested by:* {code(r.requested_by, 200)}"
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
    blocks = [section("\n".join(lines))]
    if r.context:
        blocks.append(context(" · ".join(_context_item(k, v) for k, v in sorted(r.context.items()))))
    if history:
        title = "*History*" + (
            f" (latest {HISTORY_CAP}; `/jit audit {code_text(r.id, 64)} 100` for more)"
            if len(history) >= HISTORY_CAP
            else ""
        )
        blocks.append(section(title))
        lines = [event_line(e) for e in history]
        blocks += chunk_lines(lines, MAX_BLOCKS - len(blocks))
    return blocks[:MAX_BLOCKS]


def _context_item(key: str, value: object) -> str:
    shown = link(value, RUN_LINK_LABEL) if key == "run_url" else code(value, 200)
    return f"{code(key, 40)}: {shown}"
