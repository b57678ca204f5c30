"""③ The credential is issued — fenced by the grant job's claim, cut at its change window — and read
back only by the run that asked."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from bot.core import errors as E
from bot.core.clock import now, now_ms, rfc3339, to_ms
from bot.core.crypto import Vault
from bot.core.model import UNDECIDED, AccessRequest, Status
from bot.core.policy.inflight import InFlightRules
from bot.core.ports import GrantBackend, GrantRequest, Metrics
from bot.request.service import FollowUp
from bot.store import keys
from bot.store.audit import AuditLog
from bot.store.requests import Outcome, Store

log = logging.getLogger("jit.grant")

#: The backend configured for an action in a policy version (sha256; None: the current one).
BackendFor = Callable[[str, str | None], GrantBackend]


def grant_request(req: AccessRequest, issued: datetime | None = None, expires: datetime | None = None) -> GrantRequest:
    """What a backend is told about `req` (from its issue time to its expiry)."""
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


class GrantService:
    def __init__(self, store: Store, audit: AuditLog, rules: InFlightRules, vault: Vault, metrics: Metrics) -> None:
        self.store = store
        self.audit = audit
        self.rules = rules
        self.vault = vault
        self.metrics = metrics

    def terms(self, req: AccessRequest, at: datetime) -> tuple[datetime | None, str | None]:
        """(the latest `expires_at` the rules allow, why the grant may not be issued at all).
        A grant that would outlast its change window is cut at the window's end."""
        if not self.rules.action_exists(req):
            return None, "the action was removed from the policy"
        break_glass = bool(req.fields.get("break_glass_by"))
        open_, until = self.rules.windows_until(req, at, break_glass=break_glass)
        if not open_:
            return None, "the change window closed before the grant could be issued"
        return until, None

    def issue(self, rid: str, token: str, backend_for: BackendFor) -> None:
        """Issue the credential of an approved request, fenced by the grant job's claim `token`.

        The intent is recorded before the backend is called; only the current claim records the
        result. Whatever a request that ended meanwhile got is revoked through the due queue."""
        req = self.store.get(rid)
        if req is None:
            return
        issued = now()
        cap = None
        if req.status == Status.APPROVED:
            cap, refusal = self.terms(req, issued)
            if refusal:
                self.fail(req, refusal)  # the begin below settles any earlier attempt
        begin = self.store.begin_grant(rid, token, to_ms(issued))
        if begin.result != "ok":
            return  # stale claim, already granted, or ended (a settle queued the revoke it owes)
        expires = issued + req.ttl
        cut = cap is not None and cap < expires
        if cut:
            expires = cap
        greq = grant_request(req, issued, expires)
        backend = backend_for(req.action, req.policy_sha256)
        started = now_ms()
        try:
            credential = backend.grant(greq)
        except BaseException:
            self.store.grant_attempt_failed(rid, token, now_ms())
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
        event = {"request_id": rid, "action": req.action, "actor": "jit"}
        out = self.store.finish_grant(
            rid,
            token,
            to_ms(issued),
            to_ms(expires),
            self.vault.seal(credential),
            now_ms(),
            issued=self.audit.event_body("grant.issued", details=details, **event),
            late=self.audit.event_body(
                "grant.issued",
                outcome="late",
                details={**details, "why": "the request ended while the backend worked: revoking at once"},
                **event,
            ),
            held=keys.held_grants(req.pipeline, req.action),
        )
        if out.result == "ok":
            if cut:
                self.store.set_fields(rid, cut_by_window="1")
            self.metrics.request(req.action, "granted")
            self.metrics.granted(req.action, backend.type, grant_ms / 1000)
        elif out.result == "stale":
            log.warning("grant %s finished after its claim moved on; its result is not used", rid)

    def fail(self, req: AccessRequest, error: str, attempts: int | None = None) -> Outcome:
        """approved → failed: the grant kept failing, or the rules no longer allow it."""
        details: dict[str, Any] = {"error": error}
        if attempts is not None:
            details["attempts"] = attempts
        out = self.store.fail(
            req.id,
            error,
            to_ms(now()),
            self.audit.event_body(
                "request.failed", request_id=req.id, action=req.action, actor="jit", outcome="error", details=details
            ),
        )
        if out.ok:
            self.metrics.request(req.action, "failed")
        return out

    def credential(self, follow_up: FollowUp) -> tuple[dict[str, Any], AccessRequest]:
        """The credential, while the grant is active; who fetched it goes to the audit trail."""
        req = follow_up.request
        if req.status in UNDECIDED or req.status == Status.PENDING:
            raise E.NotActive(f"the request is {req.status.value}; the credential is not issued yet")
        if req.status != Status.ACTIVE or (req.expires_at and req.expires_at <= now()):
            raise E.Gone(f"the credential is gone (request {req.status.value})")
        blob = self.store.credential_blob(req.id)
        if blob is None:
            raise E.Gone("the credential is gone")
        self.audit.append(
            "credential.fetched",
            request_id=req.id,
            action=req.action,
            actor=f"pipeline:{req.pipeline}",
            details={"via": follow_up.via},
        )
        return self.vault.open(blob), req
