"""What `jit run` did with a grant, as Slack text (pure): the thread's "Used … by run …" line, the
masked transcript as a code block, and the summary `/jit audit <id>` shows."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from bot.core.model import AccessRequest, Status
from bot.decision.slack.views.text import MAX_MESSAGE_TEXT, code, fit, literal, mention

#: Characters a code block cannot show as they are: control characters other than newline and tab.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_ENTITY = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def spoken(seconds: float) -> str:
    """`2 m 13 s`, `45 s`, `1 h 5 m`: a duration as the thread reads it."""
    s = max(0, int(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h} h {m} m" if m else f"{h} h"
    if m:
        return f"{m} m {s} s" if s else f"{m} m"
    return f"{s} s"


def _how_it_ended(req: AccessRequest) -> str:
    early = ""
    if req.expires_at is not None and req.revoked_at is not None and req.revoked_at < req.expires_at:
        early = f" {spoken((req.expires_at - req.revoked_at).total_seconds())} early"
    if req.status == Status.REVOKED and (req.revoked_by or "").startswith("pipeline:"):
        return f"released{early}" if early else "released"
    if req.status == Status.REVOKED:
        by = f" by {mention(req.revoked_by)}" if req.revoked_by else ""
        return f"revoked{by}{early}"
    return "expired"


def session_line(req: AccessRequest, record: dict[str, Any]) -> str:
    """`Used 2 m 13 s by run 42 · exit 0 · released 12 m 47 s early`."""
    used = f"Used {spoken(int(record.get('duration_ms') or 0) / 1000)}"
    if record.get("run"):
        used += f" by run {literal(record['run'], 40)}"
    elif record.get("runner"):
        used += f" on {literal(record['runner'], 80)}"
    parts = [used, f"exit {int(record.get('exit_code') or 0)}"]
    if record.get("ended_by") == "grant_end":
        parts.append("stopped when the grant ended")
    parts.append(_how_it_ended(req))
    return fit(" · ".join(parts), MAX_MESSAGE_TEXT)


def code_block(text: str, limit: int) -> tuple[str, bool]:
    """`text` as a mrkdwn code block of its last characters within `limit`, and whether it was
    cut: entities escaped (no mention or link can form), backticks that would close the block
    replaced, control characters shown as �."""
    tokens = [_ENTITY.get(c, c) for c in _CONTROL.sub("\ufffd", text).replace("`", "\u02cb")]
    room = limit - 6
    kept: list[str] = []
    size = 0
    for token in reversed(tokens):
        if size + len(token) > room:
            break
        kept.append(token)
        size += len(token)
    cut = len(kept) < len(tokens)
    body = "".join(reversed(kept))
    if cut and "\n" in body[:200]:
        body = body[body.index("\n") + 1 :]  # start at a line
    return f"```{body.rstrip() or ' '}```", cut


def transcript_message(record: dict[str, Any], limit: int = MAX_MESSAGE_TEXT) -> str:
    """The masked transcript as a snippet in the thread (its tail when longer than a message)."""
    block, cut = code_block(str(record.get("transcript") or ""), limit - 120)
    lines = int(record.get("output_lines") or 0)
    head = f"Transcript (masked, {lines} line{'s' if lines != 1 else ''}"
    if cut or record.get("transcript_truncated"):
        head += ", last part only: `jit audit export --request` has what was kept"
    return f"{head}):\n{block}"


def audit_summary(req: AccessRequest | None, record: dict[str, Any]) -> str:
    """The session in `/jit audit <id>`: how long, by which run, the exit, the digest."""
    if req is not None:
        line = session_line(req, record)
    else:
        line = f"Used {spoken(int(record.get('duration_ms') or 0) / 1000)}"
    size = int(record.get("output_bytes") or 0)
    details = [
        f"{int(record.get('output_lines') or 0)} lines / {size:,} bytes of output",
        f"transcript sha256 {code(str(record.get('transcript_sha256') or '')[:16], 16)}",
    ]
    if record.get("started_at"):
        details.insert(0, f"started {code(_stamp(record['started_at']), 30)}")
    return fit(f"*Session* — {line}\n" + " · ".join(details), MAX_MESSAGE_TEXT)


def _stamp(value: str) -> str:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return value
