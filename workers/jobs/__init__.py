"""RQ jobs: each runs one due-queue member (grant, expire, revoke, timeout, slack, …) and moves state on.

A job may run twice or die half-way; every handler is idempotent. A job runs only while it holds
its member's current claim (`Lease.held`): a copy handed out again after a long wait in RQ does
nothing. A handler that fails puts its member back with backoff; only success removes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from bot import logs
from bot.core.clock import now, now_ms, rfc3339, to_ms
from bot.core.model import AccessRequest, Status
from bot.store.metrics import Metrics
from bot.wiring import Runtime, current
from workers.backends.base import GrantError, GrantRequest
from workers.queue.scheduler import DueQueue, Lease

log = logging.getLogger("jit.jobs")


class RetryLater(Exception):
    """Not a failure: try again after `delay_ms` (Slack's Retry-After, a busy lock)."""

    def __init__(self, delay_ms: int) -> None:
        super().__init__(f"retry in {delay_ms} ms")
        self.delay_ms = delay_ms


def grant_request(req: AccessRequest, issued: datetime | None = None, expires: datetime | None = None) -> GrantRequest:
    issued = issued or req.issued_at or now()
    expires = expires or req.expires_at or issued + req.ttl
    return GrantRequest(
        id=req.id,
        action=req.action,
        pipeline=req.pipeline,
        requested_by=req.requested_by,
        reason=req.reason,
        ttl_seconds=max(int((expires - issued).total_seconds()), 0),
        issued_at=issued,
        expires_at=expires,
        context=req.context,
    )


# ------------------------------------------------------------------------- handlers


def do_grant(rt: Runtime, rid: str, token: str) -> None:
    """Issue the credential of an approved request, fenced by the job's claim `token`."""
    req = rt.store.get(rid)
    if req is None:
        return
    issued = now()
    cap = None
    if req.status == Status.APPROVED:
        cap, refusal = rt.access.grant_terms(req, issued)
        if refusal:
            rt.access.fail_grant(req, refusal)  # the begin below settles any earlier attempt
    begin = rt.store.begin_grant(rid, token, to_ms(issued))
    if begin.result != "ok":
        return  # stale claim, already granted, or ended (a settle queued the revoke it owes)
    expires = issued + req.ttl
    cut = cap is not None and cap < expires
    if cut:
        expires = cap
    greq = grant_request(req, issued, expires)
    backend = rt.backend_for(req.action, req.policy_sha256)
    started = now_ms()
    try:
        credential = backend.grant(greq)
    except BaseException:
        rt.store.grant_attempt_failed(rid, token, now_ms())
        raise
    grant_ms = now_ms() - started
    details = {
        "backend": backend.type,
        "expires_at": rfc3339(expires),
        "ttl_seconds": greq.ttl_seconds,
        "target_enforces_expiry": bool(getattr(backend.config, "enforces_expiry", backend.enforces_expiry)),
        "grant_ms": grant_ms,
        **({"cut_by_window": True} if cut else {}),
    }
    out = rt.store.finish_grant(
        rid,
        token,
        to_ms(issued),
        to_ms(expires),
        rt.vault.seal(credential),
        now_ms(),
        issued=rt.audit.event_body("grant.issued", request_id=rid, action=req.action, actor="jit", details=details),
        late=rt.audit.event_body(
            "grant.issued",
            request_id=rid,
            action=req.action,
            actor="jit",
            outcome="late",
            details={**details, "why": "the request ended while the backend worked: revoking at once"},
        ),
    )
    if out.result == "ok":
        if cut:
            rt.store.set_fields(rid, cut_by_window="1")
        Metrics(rt.redis).request(req.action, "granted")
        Metrics(rt.redis).granted(req.action, backend.type, grant_ms / 1000)
    elif out.result == "stale":
        log.warning("grant %s finished after its claim moved on; its result is not used", rid)


def _revoke(rt: Runtime, rid: str, *, expiry: bool, req: AccessRequest | None = None) -> None:
    req = req if req is not None else rt.store.get(rid)
    if req is None:
        return
    if expiry and req.status != Status.ACTIVE:
        return  # ended some other way; its own revoke item does the work
    blob = rt.store.credential_blob(rid)
    credential = rt.vault.open(blob) if blob else None
    if req.revoke_done_at is not None and not req.revoke_pending and credential is None:
        return  # done already
    backend = rt.backend_for(req.action, req.policy_sha256)
    started = now_ms()
    backend.revoke(grant_request(req), credential)
    t = now_ms()
    by = "expiry" if req.status == Status.ACTIVE else (req.revoked_by or "jit")
    details: dict = {"backend": backend.type}
    lateness = None
    if req.expires_at is not None:
        details["expires_at"] = rfc3339(req.expires_at)
        if req.status == Status.ACTIVE:
            lateness = t - to_ms(req.expires_at)
            details["lateness_ms"] = lateness
    if credential is None:
        details["cleanup"] = "no credential was recorded; cleaned up any partial grant"
    out = rt.store.mark_revoked(
        rid, t, rt.audit.event_body("grant.revoked", request_id=rid, action=req.action, actor=by, details=details)
    )
    if out.result == "ok" and out.status in (Status.EXPIRED, Status.REVOKED):
        Metrics(rt.redis).request(req.action, out.status)
        Metrics(rt.redis).revoked(
            req.action, backend.type, (t - started) / 1000, None if lateness is None else lateness / 1000
        )


def do_expire(rt: Runtime, rid: str, token: str) -> None:
    req = rt.store.get(rid)
    if req is not None and req.expires_at is not None and now() < req.expires_at:
        raise RetryLater(to_ms(req.expires_at) - now_ms())  # never early
    _revoke(rt, rid, expiry=True, req=req)  # just read: one Redis round trip less per expiry


def do_revoke(rt: Runtime, rid: str, token: str) -> None:
    _revoke(rt, rid, expiry=False)


def do_timeout(rt: Runtime, rid: str, token: str) -> None:
    req = rt.store.get(rid)
    if req is None or req.status != Status.PENDING:
        return
    if now() < req.pending_until:
        raise RetryLater(to_ms(req.pending_until) - now_ms())
    rt.access.time_out(rid)


def do_slack(rt: Runtime, rid: str, token: str) -> None:
    from workers.jobs.notify import followups
    from workers.jobs.notify.message import sync_request_message

    req = rt.store.get(rid)
    if req is not None:
        # First, so a message still waiting for its channel's slot never holds up a DM.
        followups.schedule(rt, req)
    sync_request_message(rt, rid)


def do_dm(rt: Runtime, rid: str, token: str) -> None:
    from workers.jobs.notify import followups

    followups.do_dm(rt, rid)


def do_remind(rt: Runtime, rid: str, token: str) -> None:
    from workers.jobs.notify import followups

    followups.do_remind(rt, rid)


def do_warn(rt: Runtime, rid: str, token: str) -> None:
    from workers.jobs.notify import followups

    followups.do_warn(rt, rid)


def do_break_glass_alert(rt: Runtime, rid: str, token: str) -> None:
    from workers.jobs.notify import notices

    notices.send_break_glass_alert(rt, rid)


def do_notice(rt: Runtime, nid: str, token: str) -> None:
    from workers.jobs.notify import notices

    notices.send_notice(rt, nid)


HANDLERS: dict[str, Callable[[Runtime, str, str], None]] = {
    "grant": do_grant,
    "expire": do_expire,
    "revoke": do_revoke,
    "timeout": do_timeout,
    "slack": do_slack,
    "dm": do_dm,  # the requester's DM per outcome (workers/jobs/notify/followups.py)
    "remind": do_remind,  # a pending request's reminder at half its timeout
    "warn": do_warn,  # "expires in 5 min" in an active grant's thread
    "bgalert": do_break_glass_alert,  # the security channel hears of a break glass
    "notice": do_notice,  # one owed Slack message (alerts, audit-channel lines, refusals)
}


# ------------------------------------------------------------------------- the job


def run_due_batch(items: list[tuple[str, str]]) -> None:
    """Several due members in one job (the scheduler batches when many fall due at once)."""
    for member, token in items:
        run_due(member, token)


def run_due(member: str, token: str) -> None:
    kind, _, rid = member.partition(":")
    with logs.bind(request_id=rid or None, job=kind):
        _run_due(member, token)


def _run_due(member: str, token: str) -> None:
    rt = current()
    kind, _, rid = member.partition(":")
    handler = HANDLERS.get(kind)
    due = DueQueue(rt.redis)
    if handler is None:
        log.error("unknown due member %s", member)
        due.done(member, token)
        return
    lease = Lease(due, member, token)
    try:
        with lease:
            if not lease.held:
                return  # this claim was handed out again meanwhile: the current one does the work
            handler(rt, rid, token)
    except RetryLater as e:
        due.retry_at(member, token, now_ms() + max(e.delay_ms, 1))
        return
    except Exception as e:  # noqa: BLE001 - every failure is retried, none is lost
        attempts = due.failed(member, token, now_ms())
        if attempts >= 0:
            _failed(rt, kind, rid, attempts, e)
        return
    due.done(member, token)


def _failed(rt: Runtime, kind: str, rid: str, attempts: int, error: Exception) -> None:
    message = str(error) if isinstance(error, GrantError) else f"{type(error).__name__}"
    log.warning("%s %s failed (attempt %d): %s", kind, rid, attempts, message, extra={"request_id": rid},
                exc_info=not isinstance(error, GrantError))
    req = rt.store.get(rid) if kind in ("grant", "expire", "revoke") else None
    action = req.action if req else None
    if kind == "grant":
        rt.audit.append(
            "grant.attempt_failed", request_id=rid, action=action, actor="jit", outcome="error",
            details={"attempt": attempts, "error": message},
        )
        Metrics(rt.redis).grant_failed(action)
        if req is not None and attempts >= rt.settings.jit_grant_max_attempts:
            rt.access.fail_grant(req, message, attempts)
    elif kind in ("expire", "revoke"):
        rt.audit.append(
            "revoke.attempt_failed", request_id=rid, action=action, actor="jit", outcome="error",
            details={"attempt": attempts, "error": message},
        )
        Metrics(rt.redis).revoke_failed(action)
        if req is not None:
            rt.store.set_fields(rid, revoke_pending="1")
            if attempts == rt.settings.jit_revoke_alert_after:
                from workers.jobs.notify import notices

                notices.revoke_failing(rt, req, attempts, message)


__all__ = ["run_due", "RetryLater", "HANDLERS"]
