"""Block Kit rendering as pure functions: a request in, blocks out. No I/O here."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from bot.domain.clock import human, now
from bot.domain.requests import AccessRequest, Status

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

MAX_TEXT = 3000  # a section's text
MAX_FIELD = 2000  # a section field


def escape(text: object) -> str:
    """Neutralise Slack mrkdwn control characters in text we did not write."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def safe(text: object, limit: int = 500) -> str:
    """Escape then clip, never cutting an entity in half."""
    raw = str(text)
    out = escape(raw[:limit])
    return out + ("…" if len(raw) > limit else "")


def mention(slack_id: str) -> str:
    return f"<!subteam^{slack_id}>" if slack_id.startswith("S") else f"<@{slack_id}>"


def slack_date(dt: datetime) -> str:
    """A time every reader sees in their own time zone, with a UTC fallback."""
    ts = int(dt.timestamp())
    return f"<!date^{ts}^{{date_short_pretty}} {{time_secs}}|{dt.strftime('%Y-%m-%d %H:%M:%S UTC')}>"


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
        line += f" by {who}: {safe(req.deny_reason or '', 500)}"
    elif req.status == Status.ACTIVE and req.expires_at:
        left = max((req.expires_at - now()).total_seconds(), 0)
        line += f" until {slack_date(req.expires_at)} ({human(left)} left)"
    elif req.status == Status.REVOKED:
        by = req.revoked_by or ""
        who = mention(by) if by[:1] in ("U", "W") else safe(by, 80)
        line += f" by {who}" if by else ""
    elif req.status == Status.FAILED and req.error:
        line += f": {safe(req.error, 300)}"
    return line


def request_summary(req: AccessRequest) -> str:
    """Plain-text fallback (notifications, screen readers)."""
    return f"Access request {req.id}: {req.action} for {req.pipeline} — {req.status.value}"


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
) -> list[dict[str, Any]]:
    """The request's channel message. `break_glass`: the action has break-glass approvers
    (show the button); `break_glass_requested`: the pipeline asked for it (no Approve button);
    `break_glass_by`/`justification`: it was used; `auto_rule`: the rule that auto-approved;
    `self_approval`: "enforced", "allowed" or "unknown_requester" (the requester is no known
    person, so self-approval cannot be ruled out); `cut_by_window`: the grant ends with its
    change window rather than after its full TTL."""
    ctx = req.context
    auto = req.decided_by == "auto"
    rule = auto_rule or f"actions.{req.action}.auto_approve"

    def said(key: str) -> str:
        """On a verified request, which values the token vouches for and which the pipeline said."""
        if not req.verified:
            return ""
        return " :lock: _verified_" if key in req.verified_keys else " _(said by the pipeline, unverified)_"

    fields = [
        f"*Action*\n`{safe(req.action, 64)}`" + (f"\n{safe(description, 300)}" if description else ""),
        f"*Pipeline*\n{safe(req.pipeline, 100)}",
        f"*Requested by*\n{safe(req.requested_by or '—', 200)}{said('requested_by') if req.requested_by else ''}",
        f"*TTL*\n{human(req.ttl)}",
    ]
    repo_bits = []
    if ctx.get("repository"):
        repo_bits.append(f"*Repository*\n{safe(ctx['repository'], 200)}{said('repository')}")
    if ctx.get("ref"):
        repo_bits.append(f"*Ref*\n`{safe(ctx['ref'], 200)}`{said('ref')}")
    if ctx.get("commit"):
        repo_bits.append(f"*Commit*\n`{safe(ctx['commit'][:12], 40)}`{said('commit')}")
    if ctx.get("environment"):
        repo_bits.append(f"*Environment*\n{safe(ctx['environment'], 100)}{said('environment')}")
    fields += repo_bits
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": clip(f"{'Auto-approved' if auto else 'Access request'}: {req.action}", 150),
                "emoji": False,
            },
        },
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*Reason*\n{safe(req.reason, 500)}"}},
        {"type": "section", "fields": [{"type": "mrkdwn", "text": clip(f, MAX_FIELD)} for f in fields[:10]]},
    ]
    run_url = ctx.get("run_url")
    ctx_elems = [f"Request `{req.id}`"]
    if run_url and run_url.startswith(("https://", "http://")):
        # the URL was validated (no spaces, <, >, |); escape & so it stays one link
        ctx_elems.append(f"<{escape(run_url)}|View the run>")
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(ctx_elems)}]})

    if auto:
        progress = f":robot_face: *Auto-approved by rule* `{safe(rule, 120)}` — no human approval needed"
    elif break_glass_by:
        progress = (
            f":rotating_light: *Break glass* by {mention(break_glass_by)} (approved alone)\n"
            f"*Justification:* {safe(justification or '', 500)}"
        )
    else:
        progress = f"*Approvals:* {len(req.approvals)} of {req.approvals_required}"
        if req.approvals:
            progress += " — " + ", ".join(mention(u) for u in req.approved_by)
        if req.status == Status.PENDING and break_glass_requested:
            progress += (
                "\n:rotating_light: *Break glass requested* — only a break-glass approver can "
                "approve, alone, with a written justification"
            )
        elif req.status == Status.PENDING and approvers:
            progress += "\n_Approvers:_ " + ", ".join(mention(a) for a in approvers[:20])
        if req.status == Status.PENDING and self_approval == "unknown_requester":
            progress += (
                "\n:warning: *The requester is not a known person* (no `requested_by`, or one the "
                "policy's `people` does not list), so jit cannot stop them from approving their own request."
            )
    blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": clip(progress, MAX_TEXT)}})
    status = status_line(req)
    if cut_by_window and req.status == Status.ACTIVE:
        status += " — cut to end with its change window"
    if req.revoke_pending:
        status += "\n:hourglass: *Revoking the credential* — jit retries until the target confirms"
    blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": clip(status, MAX_TEXT)}})

    if req.status == Status.PENDING:
        buttons = [] if break_glass_requested else [
            {
                "type": "button",
                "action_id": APPROVE,
                "text": {"type": "plain_text", "text": "Approve"},
                "style": "primary",
                "value": req.id,
            }
        ]
        buttons.append(
            {
                "type": "button",
                "action_id": DENY,
                "text": {"type": "plain_text", "text": "Deny"},
                "style": "danger",
                "value": req.id,
            }
        )
        if break_glass or break_glass_requested:
            buttons.append(
                {
                    "type": "button",
                    "action_id": BREAK_GLASS,
                    "text": {"type": "plain_text", "text": "Break glass"},
                    "value": req.id,
                }
            )
        blocks.append({"type": "actions", "block_id": f"decide:{req.id}", "elements": buttons})
    elif req.status == Status.ACTIVE:
        blocks.append(
            {
                "type": "actions",
                "block_id": f"grant:{req.id}",
                "elements": [
                    {
                        "type": "button",
                        "action_id": REVOKE,
                        "text": {"type": "plain_text", "text": "Revoke now"},
                        "style": "danger",
                        "value": req.id,
                        "confirm": {
                            "title": {"type": "plain_text", "text": "Revoke this grant?"},
                            "text": {"type": "mrkdwn", "text": "The credential stops working at once."},
                            "confirm": {"type": "plain_text", "text": "Revoke"},
                            "deny": {"type": "plain_text", "text": "Keep it"},
                        },
                    }
                ],
            }
        )
    return blocks


def deny_modal(req: AccessRequest, channel: str | None = None, message_ts: str | None = None) -> dict[str, Any]:
    import json

    return {
        "type": "modal",
        "callback_id": DENY_MODAL,
        "private_metadata": json.dumps({"id": req.id, "channel": channel, "ts": message_ts}),
        "title": {"type": "plain_text", "text": "Deny access"},
        "submit": {"type": "plain_text", "text": "Deny"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": clip(f"Deny *{safe(req.action, 64)}* for *{safe(req.pipeline, 100)}* (request `{req.id}`)?", MAX_TEXT),
                },
            },
            {
                "type": "input",
                "block_id": DENY_REASON_BLOCK,
                "label": {"type": "plain_text", "text": "Reason"},
                "element": {
                    "type": "plain_text_input",
                    "action_id": DENY_REASON_INPUT,
                    "multiline": True,
                    "max_length": 500,
                    "placeholder": {"type": "plain_text", "text": "Shown to the pipeline and in the channel"},
                },
            },
        ],
    }


def break_glass_modal(
    req: AccessRequest, channel: str | None = None, message_ts: str | None = None, max_ttl: str = ""
) -> dict[str, Any]:
    """The justification a break-glass approver must write before approving alone."""
    import json

    cut = f" The TTL is cut to at most {max_ttl}." if max_ttl else ""
    return {
        "type": "modal",
        "callback_id": BREAK_GLASS_MODAL,
        "private_metadata": json.dumps({"id": req.id, "channel": channel, "ts": message_ts}),
        "title": {"type": "plain_text", "text": "Break glass"},
        "submit": {"type": "plain_text", "text": "Break glass"},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            {
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": clip(
                        f"Approve *{safe(req.action, 64)}* for *{safe(req.pipeline, 100)}* "
                        f"(request `{req.id}`) *alone*, bypassing the usual approvals and change "
                        f"windows?{cut} The security channel is alerted at once and the request "
                        "is marked for follow-up review.",
                        MAX_TEXT,
                    ),
                },
            },
            {
                "type": "input",
                "block_id": JUSTIFICATION_BLOCK,
                "label": {"type": "plain_text", "text": "Justification"},
                "element": {
                    "type": "plain_text_input",
                    "action_id": JUSTIFICATION_INPUT,
                    "multiline": True,
                    "min_length": 10,
                    "max_length": 500,
                    "placeholder": {
                        "type": "plain_text",
                        "text": "Why this cannot wait for the normal approvals (incident link, impact)",
                    },
                },
            },
        ],
    }


def break_glass_alert(
    req: AccessRequest, by: str, justification: str, outside_window: bool, asked_ttl_s: int | None
) -> str:
    """The security channel's alert when break glass is used."""
    cut = ""
    if asked_ttl_s and asked_ttl_s > int(req.ttl.total_seconds()):
        cut = f" (asked for {human(asked_ttl_s)}, cut to the break-glass max)"
    lines = [
        f":rotating_light: *Break glass* — {mention(by)} approved *{safe(req.action, 64)}* for "
        f"*{safe(req.pipeline, 100)}* alone (request `{req.id}`).",
        f"*Justification:* {safe(justification, 500)}",
        f"*Reason given by the pipeline:* {safe(req.reason, 300)}",
        f"*TTL:* {human(req.ttl)}{cut}"
        + (" · *outside the change windows*" if outside_window else ""),
        "Marked for follow-up review: `/jit audit break-glass`.",
    ]
    return clip("\n".join(lines), MAX_TEXT)
