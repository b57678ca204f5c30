"""`/jit audit …`: who may read the trail, finding the entries, and recording that they were read."""

from __future__ import annotations

from typing import Any

from bot.core.clock import now, to_ms
from bot.decision.slack.views.audit_view import (
    AUDIT_USAGE,
    REFUSED,
    AuditQuery,
    QueryError,
    audit_blocks,
    parse_query,
)
from bot.decision.slack.views.session import audit_summary
from bot.decision.slack.views.text import section
from bot.runtime import Runtime
from bot.store.audit import REQUEST_INDEX_LEN, SCAN_LIMIT, AuditEntry
from bot.store.refusals import record_refusal


def may_read_audit(rt: Runtime, user: str) -> bool:
    if rt.rules.is_auditor(user):
        return True
    return any(rt.rules.is_approver(a, user) for a in rt.policy.actions)


def find(rt: Runtime, q: AuditQuery) -> tuple[list[AuditEntry], bool]:
    """Matching entries, newest first, and whether the scan stopped before the trail's start."""
    since_ms = to_ms(now() - q.since) if q.since else None
    if q.request_id:
        # the request's own index: no scan of the whole trail
        found = [
            e
            for e in reversed(rt.audit.entries_for_request(q.request_id, limit=REQUEST_INDEX_LEN))
            if q.matches(e.body) and (since_ms is None or int(e.stream_id.split("-")[0]) >= since_ms)
        ]
        return found[: q.n], False
    found = []
    for scanned, e in enumerate(rt.audit.newest(since_ms), 1):
        if q.matches(e.body):
            found.append(e)
            if len(found) >= q.n:
                return found, False
        if scanned >= SCAN_LIMIT:
            return found, True
    return found, False


def answer(rt: Runtime, user: str, args: str) -> list[dict[str, Any]]:
    if not may_read_audit(rt, user):
        record_refusal(
            rt.redis,
            rt.audit,
            "audit.read_refused",
            actor=user,
            details={"why": "not an auditor or approver", "args": args[:200]},
        )
        return [section(REFUSED)]
    try:
        q = parse_query(args)
    except QueryError as e:
        return [section(f"{e}\n{AUDIT_USAGE}")]
    entries, cut_short = find(rt, q)
    head = rt.audit.head()
    rt.audit.append("audit.read", actor=user, details={"args": args[:200], "returned": len(entries)})
    return audit_blocks(q, [e.body for e in entries], head, cut_short, SCAN_LIMIT, _session(rt, q))


def _session(rt: Runtime, q: AuditQuery) -> str | None:
    """The summary of the request's `jit run` session, when one was recorded (never the transcript)."""
    if not q.request_id:
        return None
    try:
        record = rt.sessions.read(q.request_id)
    except ValueError:  # sealed with a key no longer configured
        return None
    return audit_summary(rt.store.get(q.request_id), record) if record else None
