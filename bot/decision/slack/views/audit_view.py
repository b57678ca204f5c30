"""`/jit audit …`: its filters, and the entries as Block Kit (pure: the listener reads the trail)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from bot.core.clock import human, parse_duration
from bot.decision.slack.views.text import (
    MAX_MESSAGE_BLOCKS,
    MAX_TEXT,
    code,
    context,
    fit,
    literal,
    mention,
    section,
    width,
)
from bot.decision.slack.views.usage import check_lines, headline_lines

DEFAULT_N = 20
MAX_N = 100
MAX_BLOCKS = MAX_MESSAGE_BLOCKS

AUDIT_USAGE = (
    "Usage: `/jit audit [N]` — the last N events (default 20, max 100). Filters, combinable: "
    "`&lt;request-id&gt;`, `@user`, `action:&lt;name&gt;`, `since:2h`, `break-glass`."
)

_MENTION = re.compile(r"^<@([UW][A-Z0-9]{2,})(?:\|[^>]*)?>$")
_USER_ID = re.compile(r"^@?([UW][A-Z0-9]{2,})$")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_-]{4,64}$")
_N = re.compile(r"^\d{1,3}$")  # request ids are 16 hex digits: never taken for a count


class QueryError(ValueError):
    """The filter text could not be read; the message says why, for the user."""


@dataclass(frozen=True)
class AuditQuery:
    n: int = DEFAULT_N
    request_id: str | None = None
    actor: str | None = None
    action: str | None = None
    since: timedelta | None = None
    break_glass: bool = False
    clamped: bool = False  # N was above MAX_N

    def matches(self, body: dict[str, Any]) -> bool:
        if self.request_id and body.get("request_id") != self.request_id:
            return False
        if self.actor and body.get("actor") != self.actor:
            return False
        if self.action and body.get("action") != self.action:
            return False
        if self.break_glass and (body.get("details") or {}).get("break_glass") is not True:
            return False
        return True

    @property
    def filtered(self) -> bool:
        return bool(self.request_id or self.actor or self.action or self.since or self.break_glass)

    def describe(self) -> str:
        parts = []
        if self.request_id:
            parts.append(f"request {code(self.request_id, 64)}")
        if self.actor:
            parts.append(f"by {mention(self.actor)}")
        if self.action:
            parts.append(f"action {code(self.action, 64)}")
        if self.since:
            parts.append(f"since {human(self.since)} ago")
        if self.break_glass:
            parts.append("break-glass only")
        return ", ".join(parts)


def parse_query(args: str) -> AuditQuery:
    fields: dict[str, Any] = {}
    for token in args.split():
        low = token.lower()
        if _N.match(token):
            n = int(token)
            fields["n"] = max(1, min(n, MAX_N))
            fields["clamped"] = n > MAX_N
        elif m := (_MENTION.match(token) or _USER_ID.match(token)):
            fields["actor"] = m.group(1)
        elif low.startswith("action:"):
            name = token[len("action:") :]
            if not name:
                raise QueryError("`action:` needs an action name, e.g. `action:deploy-prod`.")
            fields["action"] = name
        elif low.startswith("since:"):
            try:
                fields["since"] = parse_duration(token[len("since:") :])
            except ValueError:
                raise QueryError("`since:` takes a duration such as `since:90m`, `since:2h` or `since:1d`.") from None
        elif low in ("break-glass", "breakglass", "break_glass"):
            fields["break_glass"] = True
        elif token.startswith("@"):
            raise QueryError(f"I can't tell who {code(token, 40)} is: pick the person from the @-mention menu.")
        elif _REQUEST_ID.match(token):
            fields["request_id"] = token
        else:
            raise QueryError(f"I don't understand {code(token, 40)}.")
    return AuditQuery(**fields)


REFUSED = (
    "Sorry — only auditors and approvers can read the audit trail. Ask in your security channel if you need an extract."
)


def audit_blocks(
    q: AuditQuery,
    entries: list[dict[str, Any]],
    head: dict[str, str],
    cut_short: bool,
    scan_limit: int,
    session: str | None = None,
) -> list[dict[str, Any]]:
    """The matching entries (bodies, newest first) with what the search did and the chain head;
    `session`: the request's session summary (bot/decision/slack/views/session.py), shown first."""
    what = f"matching {q.describe()}" if q.filtered else ""
    if not entries:
        return [section(f"No audit events {what}".rstrip() + ".")]
    title = f"*Audit trail* — {len(entries)} event{'s' if len(entries) != 1 else ''}"
    title += f" {what}" if what else ", newest first"
    if q.clamped:
        title += f" (at most {MAX_N} at a time)"
    notes = []
    if cut_short:
        notes.append(f"searched the latest {scan_limit:,} events only; narrow with `since:` or a request id")
    if head:
        notes.append(f"chain head #{literal(head.get('seq'), 20)} {code(head.get('hash', '')[:16], 16)}")
    blocks = [section(title)]
    if notes:
        blocks.append(context(" · ".join(notes)))
    if session:
        blocks.append(section(session))
    return blocks + chunk_lines([event_line(e) for e in entries], MAX_BLOCKS - len(blocks))


# ------------------------------------------------------------------------- rendering


def _who(actor: str | None) -> str:
    return mention(actor) if actor else "—"


def _usage_summary(event: str, d: dict[str, Any]) -> list[str]:
    """What the target saw (session.* usage events), as counts: never query text or key names."""
    if event == "session.usage":
        return check_lines(d.get("checks") if isinstance(d.get("checks"), dict) else None) + headline_lines(d)
    if event == "session.token_checked":
        state = "active" if d.get("active") is True else "inactive"
        return [f"by {literal(d.get('resource_server'), 100)}: {state} (check #{literal(d.get('checks'), 12)})"]
    if event == "session.token_checks_suppressed":
        return [f"{literal(d.get('count'), 12)} more checks by {literal(d.get('resource_server'), 100)}, counted only"]
    return []


def _detail_summary(body: dict[str, Any]) -> str:
    d = body.get("details") or {}
    bits = _usage_summary(str(body.get("event") or ""), d)
    if d.get("break_glass") is True:
        bits.append(":rotating_light: break-glass")
    for key, limit, shown in (
        ("why", 120, literal),
        ("reason", 120, literal),
        ("error", 160, literal),
        ("backend", 30, code),
        ("source", 80, code),
    ):
        if d.get(key):
            bits.append(f"{key}: {shown(d[key], limit)}")
    if d.get("sha256"):
        bits.append(f"sha256 {code(str(d['sha256'])[:12], 12)}")
    return " · ".join(bits)


def event_line(body: dict[str, Any], *, details: bool = True) -> str:
    """One audit event as one mrkdwn line (never longer than ~700 characters)."""
    t = str(body.get("time") or "")
    stamp = f"{t[:10]} {t[11:19]}" if len(t) >= 19 else t
    parts = [f"{code(stamp, 30)} {code(body.get('event') or '?', 40)}"]
    if body.get("request_id"):
        parts.append(code(body["request_id"], 64))
    if body.get("action"):
        parts.append(code(body["action"], 64))
    parts.append(_who(body.get("actor")))
    line = " ".join(parts[:2]) + (" · " + " · ".join(parts[2:]) if len(parts) > 2 else "")
    if body.get("outcome") and body["outcome"] != "ok":
        line += f" · {code(body['outcome'], 20)}"
    if details and (summary := _detail_summary(body)):
        line += f" — {summary}"
    return line


def chunk_lines(lines: list[str], max_blocks: int, limit: int = MAX_TEXT) -> list[dict[str, Any]]:
    """Pack lines into as few sections as fit Slack's text limit; summarise what does not fit."""
    blocks: list[dict[str, Any]] = []
    buf: list[str] = []
    size = 0
    for i, line in enumerate(lines):
        line = fit(line, limit - 100)
        if buf and size + width(line) + 1 > limit - 100:
            if len(blocks) == max_blocks - 2:  # keep room for the last chunk and the summary line
                blocks.append(section("\n".join(buf)))
                blocks.append(section(f"…and {len(lines) - i} more not shown."))
                return blocks
            blocks.append(section("\n".join(buf)))
            buf, size = [], 0
        buf.append(line)
        size += width(line) + 1
    if buf:
        blocks.append(section("\n".join(buf)))
    return blocks
