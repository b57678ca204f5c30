"""App Home as Block Kit: what waits for the viewer's approval, what is live, and (for auditors)
undelivered alerts, the latest audit events and the chain head. Pure: values in, a view out;
workers/jobs/notify/home.py gathers the values and publishes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bot.core.model import AccessRequest
from bot.decision.slack.views.answers import active_line, pending_line
from bot.decision.slack.views.audit_view import chunk_lines, event_line
from bot.decision.slack.views.blocks import APPROVE, DENY, revoke_button
from bot.decision.slack.views.text import (
    MAX_VIEW_BLOCKS,
    button,
    code,
    context,
    header,
    literal,
    section,
)

MAX_BLOCKS = MAX_VIEW_BLOCKS  # Slack's limit for a Home view
PENDING_CAP = 20  # two blocks each
ACTIVE_CAP = 15


@dataclass
class HomeView:
    """What one viewer's Home shows."""

    waiting: list[AccessRequest]  # pending, and this viewer's approval would count
    active: list[AccessRequest]
    may_revoke: set[str]  # ids of active grants this viewer may revoke
    open_total: int
    open_read: int
    auditor: bool
    at_ms: int
    latest: list[dict[str, Any]] = field(default_factory=list)  # audit entry bodies, newest first
    head: dict[str, str] = field(default_factory=dict)
    late_alerts: list[tuple[str, int]] = field(default_factory=list)


def _decide_buttons(req: AccessRequest) -> dict[str, Any]:
    return {
        "type": "actions",
        "block_id": f"home:decide:{req.id}",
        "elements": [button(APPROVE, "Approve", req.id, "primary"), button(DENY, "Deny", req.id, "danger")],
    }


def home_view(v: HomeView) -> dict[str, Any]:
    """One viewer's Home tab (pure: everything it shows is in `v`)."""
    waiting, active = v.waiting, v.active

    blocks: list[dict[str, Any]] = [header("Waiting for your approval")]
    if waiting:
        for r in waiting[:PENDING_CAP]:
            blocks += [section(pending_line(r)), _decide_buttons(r)]
        if len(waiting) > PENDING_CAP:
            blocks.append(context(f"…and {len(waiting) - PENDING_CAP} more waiting for you (`/jit status` lists them)"))
    else:
        blocks.append(section("Nothing is waiting for your approval."))

    blocks += [{"type": "divider"}, header(f"Active grants ({len(active)})")]
    if active:
        for r in active[:ACTIVE_CAP]:
            blocks.append(section(active_line(r), revoke_button(r) if r.id in v.may_revoke else None))
        if len(active) > ACTIVE_CAP:
            blocks.append(context(f"…and {len(active) - ACTIVE_CAP} more active grants"))
    else:
        blocks.append(section("No grants are active."))
    if v.open_total > v.open_read:
        blocks.append(context(f"Showing the newest {v.open_read} of {v.open_total} open requests."))

    if v.auditor:
        late = v.late_alerts
        if late:
            blocks += [
                {"type": "divider"},
                section(
                    f":rotating_light: *{len(late)} alert(s) not delivered* — Slack has not taken "
                    "them for over a minute; jit keeps retrying (`jit_undelivered_alerts`)."
                ),
            ]
        blocks += [{"type": "divider"}, header("Audit trail")]
        head = v.head
        if head:
            blocks.append(section(f"*Chain head* #{literal(head.get('seq'), 20)} {code(head.get('hash', ''), 64)}"))
        if v.latest:
            blocks += chunk_lines([event_line(e) for e in v.latest], 4)
        else:
            blocks.append(section("No audit events yet."))
        blocks.append(context("`/jit audit` for more; `jit audit verify` checks the whole chain."))

    blocks.append(context(f"Updated <!date^{v.at_ms // 1000}^{{time_secs}}|just now> · `/jit help`"))
    if len(blocks) > MAX_BLOCKS:  # the caps above keep well inside; never let Slack refuse the view
        blocks = blocks[: MAX_BLOCKS - 1] + [context("…more not shown")]
    return {"type": "home", "blocks": blocks}
