"""`/jit status [id]`: what is open (as far as the asker may see), or one request in full."""

from __future__ import annotations

from bot.core.model import Status
from bot.decision.slack.views import answers
from bot.runtime import Runtime
from bot.store import keys
from bot.store.refusals import record_refusal

OPEN_READ = 1000  # open requests read for one overview
HISTORY_CAP = answers.HISTORY_CAP


def answer(rt: Runtime, user: str, args: str) -> dict:
    if not args:
        total_open = rt.redis.zcard(keys.open_requests())
        reqs = [r for r in rt.store.get_many(rt.store.open_ids(limit=OPEN_READ)) if rt.rules.may_view(r, user)]
        shown = [r for r in reqs if r.status in (Status.PENDING, Status.APPROVED, Status.ACTIVE)]
        return {"text": "jit status", "blocks": answers.overview(shown, max(total_open - OPEN_READ, 0))}
    rid = args.split()[0]
    req = rt.store.get(rid)
    if req is None:
        return {"text": "jit status", "blocks": answers.not_found(rid)}
    if not rt.rules.may_view(req, user):
        record_refusal(
            rt.redis,
            rt.audit,
            "status.refused",
            actor=user,
            request_id=req.id,
            action=req.action,
            details={"why": "not an approver, auditor or the requester"},
        )
        return {"text": "Only this request's approvers, auditors and requester can see it."}
    history = [e.body for e in rt.audit.entries_for_request(req.id, limit=HISTORY_CAP)]
    return {"text": "jit status", "blocks": answers.status(req, history)}
