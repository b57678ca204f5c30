"""Block Kit rendering as pure functions: a request in, blocks out. No I/O here."""

from __future__ import annotations

import json
import re
from typing import Any

from bot.core.clock import human, now
from bot.core.model import AccessRequest, Status
from bot.decision.slack.views.text import (
    EMPTY,
    MAX_MESSAGE_TEXT,
    button,
    code,
    context,
    fields,
    fit,
    header,
    link,
    literal,
    mention,
    mrkdwn,
    plain_text,
    section,
)
from bot.decision.slack.views.text import date as slack_date

APPROVE = "jit_approve"
DENY = "jit_deny"
REVOKE = "jit_revoke"
DENY_MODAL = "jit_deny_modal"
DENY_REASON_BLOCK = "reason"
DENY_REASON_INPUT = "reason_input"
BREAK_GLASS = "jit_break_glass"
BREAK_GLASS_MODAL = "jit_break_glass_modal"
JUSTIFICATION_BLOCK = "justification"
JUSTIFICATION_INPUT = "justification_input"
EXTEND = "jit_extend"
EXTEND_MODAL = "jit_extend_modal"
EXTEND_TTL_BLOCK = "ttl"
EXTEND_TTL_INPUT = "ttl_input"
EXTEND_REASON_BLOCK = "reason"
EXTEND_REASON_INPUT = "reason_input"
RELEASE = "jit_release"

#: Shown for a run URL from the pipeline (https only, with its host; see text.link).
RUN_LINK_LABEL = "View the run"


_STATUS_LINE = {
    Status.PENDING: ":hourglass_flowing_sand: *Waiting for approval*",
    Status.APPROVED: ":gear: *Approved* — issuing the credential…",
    Status.ACTIVE: ":white_check_mark: *Active*",
    Status.EXPIRED: ":lock: *Expired* — the credential was revoked",
    Status.REVOKED: ":no_entry: *Revoked early*",
    Status.DENIED: ":x: *Denied*",
    Status.TIMED_OUT: ":alarm_clock: *Timed out* — nobody decided in time",
    Status.CANCELLED: ":leftwards_arrow_with_hook: *Cancelled* by the pipeline",
    Status.FAILED: ":warning: *Failed* — the credential could not be issued",
}


def status_line(req: AccessRequest) -> str:
    line = _STATUS_LINE[req.status]
    if req.status == Status.DENIED:
        who = mention(req.decided_by) if req.decided_by else "an approver"
        line += f" by {who}: {literal(req.deny_reason, 500) or EMPTY}"
    elif req.status == Status.ACTIVE and req.expires_at:
        left = max((req.expires_at - now()).total_seconds(), 0)
        line += f" until {slack_date(req.expires_at)} ({human(left)} left)"
    elif req.status == Status.REVOKED and req.revoked_by:
        line += f" by {mention(req.revoked_by)}"
    elif req.status == Status.FAILED and req.error:
        line += f": {literal(req.error, 300)}"
    return line


def request_summary(req: AccessRequest) -> str:
    """Plain-text fallback (notifications, screen readers: no code spans, which show as backticks)."""
    return fit(
        f"Access request {literal(req.id, 64)}: {literal(req.action, 64)} for "
        f"{literal(req.pipeline, 100)} — {req.status.value}",
        MAX_MESSAGE_TEXT,
    )


def request_blocks(
    req: AccessRequest,
    description: str = "",
    approvers: list[str] | None = None,
    *,
    break_glass: bool = False,
    break_glass_requested: bool = False,
    break_glass_by: str | None = None,
    justification: str | None = None,
    auto_rule: str | None = None,
    self_approval: str = "enforced",
    cut_by_window: bool = False,
    rules: list[dict[str, Any]] | None = None,
    oncall_notes: list[str] | None = None,
    extendable: bool = False,
    extension: dict[str, Any] | None = None,
    extensions: int = 0,
    usage: str = "",
) -> list[dict[str, Any]]:
    """The request's channel message. `break_glass`: the action has break-glass approvers
    (show the button); `break_glass_requested`: the pipeline asked for it (no Approve button);
    `break_glass_by`/`justification`: it was used; `auto_rule`: the rule that auto-approved;
    `self_approval`: "enforced", "allowed" or "unknown_requester" (the requester is no known
    person, so self-approval cannot be ruled out); `cut_by_window`: the grant ends with its
    change window rather than after its full TTL; `rules`: an all-of action's rules, each
    {name, count, counted, approvers}, shown with their progress ("Leads 1/1 ✓ · Security 0/1");
    `oncall_notes`: on-call schedules that cannot be read now (they count nobody); `extendable`:
    the action's grants may be extended (show Extend); `extension`: the extension waiting for
    approval, {add_s, by, reason, required, approvers} (shown with an Approve button); `extensions`:
    how many times the grant was extended; `usage`: what the target saw of the grant's use
    (views/usage.py), shown under the status."""
    ctx = req.context
    auto = req.decided_by == "auto"
    rule = auto_rule or f"actions.{req.action}.auto_approve"

    def said(key: str) -> str:
        """On a verified request, which values the token vouches for and which the pipeline said."""
        if not req.verified:
            return ""
        return " :lock: _verified_" if key in req.verified_keys else " _(said by the pipeline, unverified)_"

    items = [
        f"*Action*\n{code(req.action, 64)}" + (f"\n{literal(description, 300)}" if description else ""),
        f"*Pipeline*\n{code(req.pipeline, 100)}",
        f"*Requested by*\n{code(req.requested_by, 200)}{said('requested_by') if req.requested_by else ''}",
        f"*TTL*\n{human(req.ttl)}",
    ]
    if ctx.get("repository"):
        items.append(f"*Repository*\n{code(ctx['repository'], 200)}{said('repository')}")
    if ctx.get("ref"):
        items.append(f"*Ref*\n{code(ctx['ref'], 200)}{said('ref')}")
    if ctx.get("commit"):
        items.append(f"*Commit*\n{code(str(ctx['commit'])[:12], 40)}{said('commit')}")
    if ctx.get("environment"):
        items.append(f"*Environment*\n{code(ctx['environment'], 100)}{said('environment')}")
    blocks: list[dict[str, Any]] = [
        header(f"{'Auto-approved' if auto else 'Access request'}: {req.action}"),
        section(f"*Reason*\n{literal(req.reason, 500) or EMPTY}"),
        fields(items),
    ]
    ctx_elems = [f"Request {code(req.id, 64)}"]
    if ctx.get("run_url"):
        ctx_elems.append(link(ctx["run_url"], RUN_LINK_LABEL))
    blocks.append(context(" · ".join(ctx_elems)))

    if auto:
        progress = f":robot_face: *Auto-approved by rule* {code(rule, 120)} — no human approval needed"
    elif break_glass_by:
        progress = (
            f":rotating_light: *Break glass* by {mention(break_glass_by)} (approved alone)\n"
            f"*Justification:* {literal(justification, 500) or EMPTY}"
        )
    else:
        if rules:
            progress = "*Approvals:* " + rules_progress(rules)
        else:
            progress = f"*Approvals:* {len(req.approvals)} of {req.approvals_required}"
        if req.approvals:
            progress += " — " + ", ".join(mention(u) for u in req.approved_by)
        if req.status == Status.PENDING and rules and not break_glass_requested:
            progress += "".join(
                f"\n_{literal(r['name'], 40)}:_ " + ", ".join(mention(a) for a in r["approvers"][:10]) for r in rules
            )
        if req.status == Status.PENDING and break_glass_requested:
            progress += (
                "\n:rotating_light: *Break glass requested* — only a break-glass approver can "
                "approve, alone, with a written justification"
            )
        elif req.status == Status.PENDING and approvers and not rules:
            progress += "\n_Approvers:_ " + ", ".join(mention(a) for a in approvers[:20])
        for note in (oncall_notes or [])[:5] if req.status == Status.PENDING else []:
            progress += f"\n:warning: {literal(note, 300)}"
        if req.status == Status.PENDING and self_approval == "unknown_requester":
            progress += (
                "\n:warning: *The requester is not a known person* (no requested_by, or one the "
                "policy's people does not list), so jit cannot stop them from approving their own request."
            )
    blocks.append(section(progress))
    status = status_line(req)
    if cut_by_window and req.status == Status.ACTIVE:
        status += " — cut to end with its change window"
    if extensions and req.status == Status.ACTIVE:
        status += " — extended" + (f" {extensions} times" if extensions > 1 else "")
    if req.revoke_pending:
        status += "\n:hourglass: *Revoking the credential* — jit retries until the target confirms"
    blocks.append(section(status))
    if usage:
        blocks.append(context(usage))

    if req.status == Status.PENDING:
        buttons = [] if break_glass_requested else [button(APPROVE, "Approve", req.id, "primary")]
        buttons.append(button(DENY, "Deny", req.id, "danger"))
        if break_glass or break_glass_requested:
            buttons.append(button(BREAK_GLASS, "Break glass", req.id))
        blocks.append({"type": "actions", "block_id": f"decide:{req.id}", "elements": buttons})
    elif req.status == Status.ACTIVE:
        if extension:
            blocks.append(section(extension_text(extension)))
        blocks.append(
            {"type": "actions", "block_id": f"grant:{req.id}", "elements": grant_buttons(req, extendable, extension)}
        )
    return blocks


def extension_text(extension: dict[str, Any]) -> str:
    """An extension waiting for approval: how much, who asked, why, and its approvals so far."""
    by = extension.get("by") or ""
    who = code(by, 100) if by.startswith("pipeline:") else mention(by)
    line = (
        f":hourglass_flowing_sand: *Extension requested* by {who}: +{human(extension['add_s'])}"
        f" — {literal(extension.get('reason'), 300) or EMPTY}\n"
        f"*Approvals:* {len(extension.get('approvers') or [])} of {extension.get('required', 1)}"
    )
    if extension.get("approvers"):
        line += " — " + ", ".join(mention(u) for u in extension["approvers"])
    return line


def grant_buttons(
    req: AccessRequest, extendable: bool = False, extension: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """An active grant's buttons: Approve (an extension waits), Extend, Release now, Revoke now."""
    out = []
    if extension:
        out.append(button(APPROVE, "Approve", req.id, "primary"))
    elif extendable:
        out.append(button(EXTEND, "Extend", req.id))
    out.append(release_button(req))
    out.append(revoke_button(req))
    return out


def release_button(req: AccessRequest, label: str = "Release now") -> dict[str, Any]:
    """The requester ("I'm done") or an approver ends the grant now."""
    return button(RELEASE, label, req.id)


def warning_blocks(req: AccessRequest, text: str, extendable: bool) -> list[dict[str, Any]]:
    """The "expires in 5 min" note in the request's thread, with Extend and Release buttons."""
    elements = ([button(EXTEND, "Extend", req.id)] if extendable else []) + [release_button(req, "Release")]
    return [section(text), {"type": "actions", "block_id": f"warn:{req.id}", "elements": elements}]


def rules_progress(rules: list[dict[str, Any]]) -> str:
    """Each rule's approvals against its count: "Leads 1/1 ✓ · Security 0/1"."""
    parts = []
    for r in rules:
        done = len(r["counted"]) >= r["count"]
        parts.append(f"{literal(r['name'], 40)} {len(r['counted'])}/{r['count']}" + (" ✓" if done else ""))
    return " · ".join(parts)


def _channel(channel: str) -> str:
    """A live channel link for a channel id; anything else as literal text."""
    return f"<#{channel}>" if re.fullmatch(r"[CG][A-Z0-9]{2,20}", channel or "") else literal(channel, 40)


def oncall_page_text(req: AccessRequest, channel: str) -> str:
    """The DM to whoever is on call when a request waits for approval."""
    return fit(
        f":pager: You are on call: {code(req.action, 64)} for {code(req.pipeline, 100)} waits for approval "
        f"in {_channel(channel)} (request {code(req.id, 64)}). Reason: {literal(req.reason, 300) or EMPTY}",
        MAX_MESSAGE_TEXT,
    )


def revoke_button(req: AccessRequest) -> dict[str, Any]:
    """The "Revoke now" button, with a confirmation (the request's message and the Home tab)."""
    return button(
        REVOKE,
        "Revoke now",
        req.id,
        "danger",
        confirm={
            "title": plain_text("Revoke this grant?"),
            "text": mrkdwn("The credential stops working at once."),
            "confirm": plain_text("Revoke"),
            "deny": plain_text("Keep it"),
        },
    )


def _modal(
    callback_id: str, title: str, submit: str, meta: dict[str, Any], blocks: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "type": "modal",
        "callback_id": callback_id,
        "private_metadata": json.dumps(meta),
        "title": plain_text(title, 24),
        "submit": plain_text(submit, 24),
        "close": plain_text("Cancel", 24),
        "blocks": blocks,
    }


def _text_input(block_id: str, action_id: str, label: str, placeholder: str, **limits: int) -> dict[str, Any]:
    return {
        "type": "input",
        "block_id": block_id,
        "label": plain_text(label, 2000),
        "element": {
            "type": "plain_text_input",
            "action_id": action_id,
            "multiline": True,
            **limits,
            "placeholder": plain_text(placeholder, 150),
        },
    }


def deny_modal(req: AccessRequest, channel: str | None = None, message_ts: str | None = None) -> dict[str, Any]:
    return _modal(
        DENY_MODAL,
        "Deny access",
        "Deny",
        {"id": req.id, "channel": channel, "ts": message_ts},
        [
            section(f"Deny {code(req.action, 64)} for {code(req.pipeline, 100)} (request {code(req.id, 64)})?"),
            _text_input(
                DENY_REASON_BLOCK,
                DENY_REASON_INPUT,
                "Reason",
                "Shown to the pipeline and in the channel",
                max_length=500,
            ),
        ],
    )


def break_glass_modal(
    req: AccessRequest, channel: str | None = None, message_ts: str | None = None, max_ttl: str = ""
) -> dict[str, Any]:
    """The justification a break-glass approver must write before approving alone."""
    cut = f" The TTL is cut to at most {literal(max_ttl, 40)}." if max_ttl else ""
    return _modal(
        BREAK_GLASS_MODAL,
        "Break glass",
        "Break glass",
        {"id": req.id, "channel": channel, "ts": message_ts},
        [
            section(
                f"Approve {code(req.action, 64)} for {code(req.pipeline, 100)} "
                f"(request {code(req.id, 64)}) *alone*, bypassing the usual approvals and change "
                f"windows?{cut} The security channel is alerted at once and the request "
                "is marked for follow-up review."
            ),
            _text_input(
                JUSTIFICATION_BLOCK,
                JUSTIFICATION_INPUT,
                "Justification",
                "Why this cannot wait for the normal approvals (incident link, impact)",
                min_length=10,
                max_length=500,
            ),
        ],
    )


def extend_modal(
    req: AccessRequest, default_ttl: str, channel: str | None = None, message_ts: str | None = None
) -> dict[str, Any]:
    """How much longer, and why (the reason is optional)."""
    ttl_input = _text_input(EXTEND_TTL_BLOCK, EXTEND_TTL_INPUT, "Extend by", "15m, 1h, 90s", max_length=20)
    ttl_input["element"]["multiline"] = False
    ttl_input["element"]["initial_value"] = default_ttl
    reason = _text_input(
        EXTEND_REASON_BLOCK, EXTEND_REASON_INPUT, "Reason", "Why the job needs more time", max_length=500
    )
    reason["optional"] = True
    return _modal(
        EXTEND_MODAL,
        "Extend the grant",
        "Extend",
        {"id": req.id, "channel": channel, "ts": message_ts},
        [
            section(
                f"Extend {code(req.action, 64)} for {code(req.pipeline, 100)} (request {code(req.id, 64)})"
                + (f", which ends {slack_date(req.expires_at)}" if req.expires_at else "")
                + "?"
            ),
            ttl_input,
            reason,
        ],
    )


def break_glass_alert(
    req: AccessRequest, by: str, justification: str, outside_window: bool, asked_ttl_s: int | None
) -> str:
    """The security channel's alert when break glass is used."""
    cut = ""
    if asked_ttl_s and asked_ttl_s > int(req.ttl.total_seconds()):
        cut = f" (asked for {human(asked_ttl_s)}, cut to the break-glass max)"
    lines = [
        f":rotating_light: *Break glass* — {mention(by)} approved {code(req.action, 64)} for "
        f"{code(req.pipeline, 100)} alone (request {code(req.id, 64)}).",
        f"*Justification:* {literal(justification, 500) or EMPTY}",
        f"*Reason given by the pipeline:* {literal(req.reason, 300) or EMPTY}",
        f"*TTL:* {human(req.ttl)}{cut}" + (" · *outside the change windows*" if outside_window else ""),
        "Marked for follow-up review: `/jit audit break-glass`.",
    ]
    return fit("\n".join(lines), MAX_MESSAGE_TEXT)


def revoke_failure_alert(attempts: int, error: str) -> str:
    """The request thread's alert when revoking keeps failing (`error`: the backend's words)."""
    return fit(
        f":rotating_light: Revoking this grant has failed {attempts} times "
        f"({literal(error, 300) or 'no detail'}). jit keeps retrying; please check the target.",
        MAX_MESSAGE_TEXT,
    )
