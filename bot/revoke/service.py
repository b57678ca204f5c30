"""④ Access ends: the pipeline releases it, an approver revokes it, the pending timeout or the expiry
comes — and the backend revoke that follows is recorded exactly once."""

from __future__ import annotations

from dataclasses import dataclass

from bot.core import errors as E
from bot.core.clock import now, now_ms, rfc3339, to_ms
from bot.core.crypto import Vault
from bot.core.model import AccessRequest, Status
from bot.core.ports import Metrics
from bot.decision.service import DecisionService
from bot.grant.service import BackendFor, grant_request
from bot.grant.usage import UsageService
from bot.request.service import FollowUp
from bot.store.audit import AuditLog
from bot.store.requests import Outcome, Store


class RevokeService:
    def __init__(
        self,
        store: Store,
        audit: AuditLog,
        decisions: DecisionService,
        vault: Vault,
        metrics: Metrics,
        usage: UsageService | None = None,
    ) -> None:
        self.store = store
        self.audit = audit
        self.decisions = decisions
        self.vault = vault
        self.metrics = metrics
        self.usage = usage

    def _event(self, event: str, req: AccessRequest, **kw) -> str:
        return self.audit.event_body(event, request_id=req.id, action=req.action, **kw)

    # ---------------------------------------------------------------- people end access

    def release(self, follow_up: FollowUp) -> AccessRequest:
        """DELETE: the pipeline cancels a pending request or ends its grant early."""
        req = follow_up.request
        actor = f"pipeline:{req.pipeline}"
        if req.status in (Status.PENDING, Status.APPROVED):
            out = self._close(req, Status.CANCELLED, {Status.PENDING, Status.APPROVED}, actor, revoked_by=actor)
            if not out.ok and out.status == "timed_out":  # its time was up: it times out now rather than a moment later
                self.time_out(req.id)
            elif not out.ok and out.status == Status.ACTIVE:  # the grant landed meanwhile: end it all the same
                self._revoke(req, actor)
        elif req.status == Status.ACTIVE:
            self._revoke(req, actor)
        return self.store.get(req.id) or req

    def revoke_by_approver(self, request_id: str, user: str) -> AccessRequest:
        req = self.decisions.load(request_id)
        self.decisions.require_approver(req, user, "revoke")
        if req.status in (Status.PENDING, Status.APPROVED):  # nothing issued yet: not "already" anything
            self.decisions.refused(req, user, "revoke", f"not active ({req.status.value})")
            raise E.NotActive(f"Only an active grant can be revoked; this request is {req.status.value}.")
        if req.status != Status.ACTIVE:
            raise self.decisions.refuse_decided(req, user, "revoke", req.status.value)
        self._revoke(req, user)
        return self.store.get(req.id) or req

    def release_by_person(self, request_id: str, user: str) -> bool:
        """The Release now button ("I'm done"): the requester (a Slack user) or an approver ends the
        grant now. True when this click released it; False when it had ended already (a second
        click: one release)."""
        req = self.decisions.load(request_id)
        if user != req.requester_slack_id:
            self.decisions.require_approver(req, user, "release")
        if req.status in (Status.PENDING, Status.APPROVED):
            self.decisions.refused(req, user, "release", f"not active ({req.status.value})")
            raise E.NotActive(f"Only an active grant can be released; this request is {req.status.value}.")
        if req.status != Status.ACTIVE:
            return False
        out = self.store.revoke(
            req.id,
            user,
            to_ms(now()),
            self._event("grant.released", req, actor=user, details={"via": "slack", "early": True}),
        )
        return out.ok

    def _revoke(self, req: AccessRequest, actor: str) -> None:
        out = self.store.revoke(req.id, actor, to_ms(now()), self._event("grant.revoke_requested", req, actor=actor))
        if out.result == "decided":
            raise E.AlreadyDecided(out.status or "decided")

    def _close(self, req: AccessRequest, to: Status, allowed: set[Status], actor: str, **fields: str) -> Outcome:
        out = self.store.close(
            req.id, to, to_ms(now()), allowed, self._event(f"request.{to.value}", req, actor=actor), **fields
        )
        if out.ok:
            self.metrics.request(req.action, to.value)
        return out

    # ---------------------------------------------------------------- time ends access

    def time_out(self, request_id: str) -> int:
        """A pending request's timeout. Returns ms still to wait (0: done, or nothing to do)."""
        req = self.store.get(request_id)
        if req is None or req.status != Status.PENDING:
            return 0
        if now() < req.pending_until:
            return to_ms(req.pending_until) - now_ms()
        self._close(req, Status.TIMED_OUT, {Status.PENDING}, "jit")
        return 0

    def expire(self, request_id: str, backend_for: BackendFor) -> int:
        """An active grant's expiry. Returns ms still to wait (never early), else revokes it."""
        req = self.store.get(request_id)
        if req is not None and req.expires_at is not None and now() < req.expires_at:
            return to_ms(req.expires_at) - now_ms()
        if req is not None and req.status == Status.ACTIVE:  # else it ended some other way
            self.complete(req, backend_for)
        return 0

    def expire_many(self, request_ids: list[str], backend_for: BackendFor) -> dict[str, int | Exception]:
        """`expire` for a batch (the hot path of an expiry storm): the requests and their credentials
        are read in one round trip, each due one is revoked at its backend, and all are recorded in
        one. Per id: ms still to wait (never early), 0 when done or nothing to do, or what its backend
        revoke raised (that one is not recorded, and comes back with backoff). Nothing here talks to
        Slack: an expiry's message update follows, paced, in another job."""
        found, sealed = self.store.get_many_with_credentials(request_ids)
        reqs = {r.id: r for r in found}
        blobs = dict(zip(request_ids, sealed, strict=True))
        out: dict[str, int | Exception] = {}
        revoked: list[_Revoked] = []
        for rid in request_ids:
            req = reqs.get(rid)
            out[rid] = 0
            if req is not None and req.expires_at is not None and now() < req.expires_at:
                out[rid] = to_ms(req.expires_at) - now_ms()
            elif req is not None and req.status == Status.ACTIVE:  # else it ended some other way
                try:
                    done = self._revoke_at_backend(req, blobs[rid], backend_for)
                except Exception as e:  # noqa: BLE001 - this one is retried; the rest go on
                    out[rid] = e
                    continue
                if done is not None:
                    revoked.append(done)
        outcomes = self.store.mark_revoked_many([(d.req.id, d.at_ms, d.event) for d in revoked])
        self.metrics.revoked_many(
            [
                (d.req.action, o.status or "", d.backend, d.seconds, d.lateness_s)
                for d, o in zip(revoked, outcomes, strict=True)
                if o.result == "ok" and o.status in (Status.EXPIRED, Status.REVOKED)
            ]
        )
        return out

    # ---------------------------------------------------------------- the backend revoke

    def complete(self, req: AccessRequest | str, backend_for: BackendFor) -> None:
        """Revoke at the backend whatever `req` was issued (or may have been), then record it:
        exactly one caller records it; while a grant is in flight nothing is (its end owes
        another revoke). Idempotent."""
        if isinstance(req, str):
            found = self.store.get(req)
            if found is None:
                return
            req = found
        done = self._revoke_at_backend(req, self.store.credential_blob(req.id), backend_for)
        if done is None:
            return
        out = self.store.mark_revoked(req.id, done.at_ms, done.event)
        if out.result == "ok" and out.status in (Status.EXPIRED, Status.REVOKED):
            self.metrics.request(req.action, out.status)
            self.metrics.revoked(req.action, done.backend, done.seconds, done.lateness_s)

    def _revoke_at_backend(self, req: AccessRequest, blob: str | None, backend_for: BackendFor) -> _Revoked | None:
        """The backend revoke itself; what to record after it, or None when it was done already."""
        credential = self.vault.open(blob) if blob else None
        if req.revoke_done_at is not None and not req.revoke_pending and credential is None:
            return None  # done already
        backend = backend_for(req.action, req.policy_sha256)
        started = now_ms()
        observed = backend.revoke(grant_request(req), credential)
        t = now_ms()
        if self.usage is not None:  # best effort, never raises; once per request (a re-run records nothing)
            self.usage.record_session(req, backend.type, observed if isinstance(observed, dict) else None, credential)
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
        return _Revoked(
            req=req,
            at_ms=t,
            event=self._event("grant.revoked", req, actor=by, details=details),
            backend=backend.type,
            seconds=(t - started) / 1000,
            lateness_s=None if lateness is None else lateness / 1000,
        )


@dataclass(frozen=True)
class _Revoked:
    """A backend revoke that succeeded, waiting to be recorded."""

    req: AccessRequest
    at_ms: int
    event: str
    backend: str
    seconds: float
    lateness_s: float | None
