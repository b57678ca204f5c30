"""RQ jobs: each runs one due-queue member (grant, expire, revoke, timeout, slack) and moves state on.

A job may run twice or die half-way; every handler is idempotent. A handler that fails puts its
member back with backoff; only success removes it from the due queue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from bot import logs
from bot.domain.clock import from_ms, human, now, now_ms, to_ms
from bot.domain.requests import Status
from bot.metrics import Metrics
from bot.runtime import Runtime, current
from bot.slack.blocks import revoke_failure_alert
from workers.backends.base import GrantError, GrantRequest
from workers.expiry import DueQueue, Lease

log = logging.getLogger("jit.jobs")


class RetryLater(Exception):
    """Not a failure: try again after `delay_ms` (Slack's Retry-After, a busy lock)."""

    def __init__(self, delay_ms: int) -> None:
        super().__init__(f"retry in {delay_ms} ms")
        self.delay_ms = delay_ms


def grant_request(req) -> GrantRequest:
    issued = req.issued_at or now()
    return GrantRequest(
        id=req.id,
        action=req.action,
        pipeline=req.pipeline,
        requested_by=req.requested_by,
        reason=req.reason,
        ttl_seconds=int(req.ttl.total_seconds()),
        issued_at=issued,
        expires_at=req.expires_at or issued + req.ttl,
        context=req.context,
    )


# ------------------------------------------------------------------------- handlers


def do_grant(rt: Runtime, rid: str) -> None:
    req = rt.store.get(rid)
    if req is None or req.status != Status.APPROVED:
        return  # already active, or cancelled (the revoke item cleans up)
    backend = rt.backend_for(req.action, req.policy_sha256)
    issued = now()
    expires = issued + req.ttl
    greq = grant_request(req)
    greq = GrantRequest(**{**greq.__dict__, "issued_at": issued, "expires_at": expires})
    started = now_ms()
    credential = backend.grant(greq)
    grant_seconds = (now_ms() - started) / 1000
    out = rt.store.activate(rid, to_ms(issued), to_ms(expires), rt.vault.seal(credential), now_ms())
    if out.ok:
        rt.audit.append(
            "grant.issued",
            request_id=rid,
            action=req.action,
            actor="jit",
            details={
                "backend": backend.type,
                "expires_at": greq.as_json()["expires_at"],
                "ttl_seconds": greq.ttl_seconds,
                "target_enforces_expiry": bool(getattr(backend.config, "enforces_expiry", backend.enforces_expiry)),
                "grant_ms": now_ms() - started,
            },
        )
        Metrics(rt.redis).request(req.action, "granted")
        Metrics(rt.redis).granted(req.action, backend.type, grant_seconds)
    elif out.result == "decided" and out.status != Status.ACTIVE:
        # cancelled while we were granting: take back what we just created
        backend.revoke(greq, credential)
        rt.store.mark_revoked(rid, now_ms())


def _revoke(rt: Runtime, rid: str, *, expiry: bool, req=None) -> None:
    req = req if req is not None else rt.store.get(rid)
    if req is None:
        return
    if expiry and req.status != Status.ACTIVE:
        return  # ended some other way; its own revoke item does the work
    if req.revoke_done_at is not None:
        rt.store.mark_revoked(rid, now_ms())  # deletes any leftover credential blob
        return
    blob = rt.store.credential_blob(rid)
    credential = rt.vault.open(blob) if blob else None
    backend = rt.backend_for(req.action, req.policy_sha256)
    started = now_ms()
    backend.revoke(grant_request(req), credential)
    t = now_ms()
    out = rt.store.mark_revoked(rid, t)
    if out.ok:
        details = {"backend": backend.type}
        by = "expiry" if out.status == Status.EXPIRED else (req.revoked_by or "jit")
        if req.expires_at is not None:
            details["expires_at"] = greq_time(req.expires_at)
            if out.status == Status.EXPIRED:
                details["lateness_ms"] = t - to_ms(req.expires_at)
        details["status"] = out.status
        if credential is None:
            details["cleanup"] = "no credential was issued; cleaned up any partial grant"
        rt.audit.append("grant.revoked", request_id=rid, action=req.action, actor=by, details=details)
        if out.status in (Status.EXPIRED, Status.REVOKED):
            lateness = details.get("lateness_ms")
            Metrics(rt.redis).request(req.action, out.status)
            Metrics(rt.redis).revoked(
                req.action, backend.type, (t - started) / 1000, None if lateness is None else lateness / 1000
            )


def greq_time(dt) -> str:
    from bot.domain.clock import rfc3339

    return rfc3339(dt)


def do_expire(rt: Runtime, rid: str) -> None:
    req = rt.store.get(rid)
    if req is not None and req.expires_at is not None and now() < req.expires_at:
        raise RetryLater(to_ms(req.expires_at) - now_ms())  # never early
    _revoke(rt, rid, expiry=True, req=req)  # just read: one Redis round trip less per expiry


def do_revoke(rt: Runtime, rid: str) -> None:
    _revoke(rt, rid, expiry=False)


def do_timeout(rt: Runtime, rid: str) -> None:
    req = rt.store.get(rid)
    if req is None or req.status != Status.PENDING:
        return
    if now() < req.pending_until:
        raise RetryLater(to_ms(req.pending_until) - now_ms())
    rt.access.time_out(rid)


def do_slack(rt: Runtime, rid: str) -> None:
    from bot.slack import followups
    from bot.slack.messages import sync_request_message

    req = rt.store.get(rid)
    if req is not None:
        # First, so a message still waiting for its channel's slot never holds up a DM.
        followups.schedule(rt, req)
    sync_request_message(rt, rid)


def do_dm(rt: Runtime, rid: str) -> None:
    from bot.slack import followups

    followups.do_dm(rt, rid)


def do_remind(rt: Runtime, rid: str) -> None:
    from bot.slack import followups

    followups.do_remind(rt, rid)


def do_warn(rt: Runtime, rid: str) -> None:
    from bot.slack import followups

    followups.do_warn(rt, rid)


HANDLERS: dict[str, Callable[[Runtime, str], None]] = {
    "grant": do_grant,
    "expire": do_expire,
    "revoke": do_revoke,
    "timeout": do_timeout,
    "slack": do_slack,
    "dm": do_dm,  # the requester's DM per outcome (bot/slack/followups.py)
    "remind": do_remind,  # a pending request's reminder at half its timeout
    "warn": do_warn,  # "expires in 5 min" in an active grant's thread
}


# ------------------------------------------------------------------------- the job


def run_due_batch(items: list[tuple[str, int]]) -> None:
    """Several due members in one job (the scheduler batches when many fall due at once)."""
    for member, score in items:
        run_due(member, score)


def run_due(member: str, claimed_score: int) -> None:
    kind, _, rid = member.partition(":")
    with logs.bind(request_id=rid or None, job=kind):
        _run_due(member, claimed_score)


def _run_due(member: str, claimed_score: int) -> None:
    rt = current()
    kind, _, rid = member.partition(":")
    handler = HANDLERS.get(kind)
    due = DueQueue(rt.redis)
    if handler is None:
        log.error("unknown due member %s", member)
        due.done(member, claimed_score)
        return
    lease = Lease(due, member, claimed_score)
    try:
        with lease:
            handler(rt, rid)
    except RetryLater as e:
        due.retry_at(member, lease.score, now_ms() + max(e.delay_ms, 1))
        return
    except Exception as e:  # noqa: BLE001 - every failure is retried, none is lost
        attempts = due.failed(member, lease.score, now_ms())
        _failed(rt, kind, rid, attempts, e)
        return
    due.done(member, lease.score)


def _failed(rt: Runtime, kind: str, rid: str, attempts: int, error: Exception) -> None:
    message = str(error) if isinstance(error, GrantError) else f"{type(error).__name__}"
    log.warning("%s %s failed (attempt %d): %s", kind, rid, attempts, message, extra={"request_id": rid},
                exc_info=not isinstance(error, GrantError))
    req = rt.store.get(rid)
    action = req.action if req else None
    if kind == "grant":
        rt.audit.append(
            "grant.attempt_failed", request_id=rid, action=action, actor="jit", outcome="error",
            details={"attempt": attempts, "error": message},
        )
        Metrics(rt.redis).grant_failed(action)
        if attempts >= rt.settings.jit_grant_max_attempts:
            out = rt.store.fail(rid, message, now_ms())
            if out.ok:
                rt.audit.append(
                    "request.failed", request_id=rid, action=action, actor="jit", outcome="error",
                    details={"error": message, "attempts": attempts},
                )
                Metrics(rt.redis).request(action or "", "failed")
            # the grant member's next run finds the request failed and retires itself
    elif kind in ("expire", "revoke"):
        rt.audit.append(
            "revoke.attempt_failed", request_id=rid, action=action, actor="jit", outcome="error",
            details={"attempt": attempts, "error": message},
        )
        Metrics(rt.redis).revoke_failed(action)
        if attempts == rt.settings.jit_revoke_alert_after and req is not None:
            from bot.slack.messages import post_thread_notice

            post_thread_notice(rt, req, revoke_failure_alert(attempts, message))


__all__ = ["run_due", "RetryLater", "HANDLERS", "from_ms", "human"]
