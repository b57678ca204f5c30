"""③ An active grant gets more time: at once within the action's `extend:` policy, or after a new
approval round on the same message — and its credential is re-issued when the backend needs it."""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta

from bot.core import errors as E
from bot.core.clock import from_ms, human, now, now_ms, parse_duration, rfc3339, to_ms
from bot.core.crypto import Vault
from bot.core.identity import encodable
from bot.core.model import AccessRequest, Status
from bot.core.policy.inflight import InFlightRules
from bot.core.policy.schema import Extend
from bot.decision.service import DecisionService
from bot.grant.service import BackendFor, grant_request
from bot.request.schemas import MAX_REASON
from bot.store.audit import AuditLog
from bot.store.requests import Outcome, Store

log = logging.getLogger("jit.grant.extend")

#: An extension re-read this many times because the expiry moved under it gives up.
ATTEMPTS = 5


@dataclass(frozen=True)
class Extension:
    """What asking for an extension did: `applied` (200) or waiting for approvals (202)."""

    request: AccessRequest
    applied: bool


@dataclass(frozen=True)
class Round:
    """An extension waiting for approval on the request's message."""

    id: str
    add: timedelta
    by: str
    reason: str
    required: int
    approvers: list[str]

    @property
    def left(self) -> int:
        return max(self.required - len(self.approvers), 0)


class ExtendService:
    def __init__(
        self, store: Store, audit: AuditLog, rules: InFlightRules, decisions: DecisionService, vault: Vault
    ) -> None:
        self.store = store
        self.audit = audit
        self.rules = rules
        self.decisions = decisions
        self.vault = vault

    # ---------------------------------------------------------------- what the policy allows

    def policy_for(self, req: AccessRequest) -> Extend:
        """The action's `extend:` block (the current policy), or 403."""
        action = self.rules.policy.action(req.action)
        if action is None or action.extend is None:
            raise E.NoExtend(f"{req.action} has no `extend:` in the policy: its grants cannot be extended")
        return action.extend

    def default_ttl(self, req: AccessRequest) -> timedelta:
        action = self.rules.policy.action(req.action)
        return action.ttl.default if action is not None else req.ttl

    def _checked(self, req: AccessRequest, ttl: str | int | None) -> tuple[Extend, timedelta]:
        """(the policy, the time to add), or the refusal: not active (409), no extend (403), a bad
        ttl (400), over max_total or past the change window (422)."""
        if req.status != Status.ACTIVE or req.expires_at is None or req.issued_at is None or req.expires_at <= now():
            raise E.NotActive(f"only an active grant can be extended; this request is {req.status.value}")
        policy = self.policy_for(req)
        if ttl is None:
            add = self.default_ttl(req)
        else:
            try:
                add = parse_duration(ttl)
            except ValueError as e:
                raise E.BadRequest(f"ttl: {e}") from None
        total = req.expires_at + add - req.issued_at
        if total > policy.max_total:
            raise E.OverMaxTotal(
                f"extending by {human(add)} would make the grant last {human(total)} in all, longer than "
                f"{req.action}'s extend.max_total of {human(policy.max_total)}"
            )
        _, until = self.rules.windows_until(req, now(), break_glass=bool(self.store.fields(req.id, "break_glass_by")))
        if until is not None and req.expires_at + add > until:
            raise E.OverMaxTotal(f"extending by {human(add)} would outlast {req.action}'s change window")
        return policy, add

    # ---------------------------------------------------------------- asking

    def ask(self, req: AccessRequest, by: str, ttl: str | int | None, reason: str) -> Extension:
        """Extend `req` by `ttl` (the action's default ttl when None): applied at once when the
        policy needs no approvals, else an approval round opens on the request's message."""
        reason = (reason or "").strip()
        if len(reason) > MAX_REASON or not encodable(reason):
            raise E.BadRequest(f"reason: at most {MAX_REASON} characters of text")
        for _ in range(ATTEMPTS):
            policy, add = self._checked(req, ttl)
            old = to_ms(req.expires_at)
            add_ms = int(add.total_seconds() * 1000)
            details = {
                "by": by,
                "reason": reason,
                "added_seconds": int(add.total_seconds()),
                "old_expires_at": rfc3339(req.expires_at),
                "new_expires_at": rfc3339(from_ms(old + add_ms)),
                "max_total_seconds": int(policy.max_total.total_seconds()),
            }
            max_total_ms = int(policy.max_total.total_seconds() * 1000)
            if policy.approvals_required == 0:
                out = self.store.extend(
                    req.id, old, add_ms, max_total_ms, by, now_ms(), self._event("grant.extended", req, by, details)
                )
            else:
                out = self.store.extend_ask(
                    req.id,
                    old,
                    add_ms,
                    max_total_ms,
                    by,
                    reason,
                    policy.approvals_required,
                    secrets.token_hex(4),
                    now_ms(),
                    self._event(
                        "extension.requested", req, by, {**details, "approvals_required": policy.approvals_required}
                    ),
                )
            if out.result != "stale":
                break
            req = self.decisions.load(req.id)
        else:
            raise E.JitError("the grant changed while it was being extended; please try again")
        self._refusal(out, req)
        if out.result == "busy":
            raise E.ExtensionPending("another extension of this grant is waiting for approval")
        return Extension(self.store.get(req.id) or req, applied=out.result == "ok" and policy.approvals_required == 0)

    def ask_as_approver(self, request_id: str, user: str, ttl: str | int | None, reason: str) -> Extension:
        """The Extend button: only an approver of the request may ask (checked on every click)."""
        req = self.decisions.load(request_id)
        self.decisions.require_approver(req, user, "extension")
        return self.ask(req, user, ttl, reason)

    def check_can_ask(self, request_id: str, user: str) -> AccessRequest:
        """Before the Extend modal opens: an approver, an active grant, an action that extends."""
        req = self.decisions.load(request_id)
        self.decisions.require_approver(req, user, "extension")
        if req.status != Status.ACTIVE:
            raise E.NotActive(f"Only an active grant can be extended; this request is {req.status.value}.")
        self.policy_for(req)
        return req

    # ---------------------------------------------------------------- approving

    def round(self, req: AccessRequest) -> Round | None:
        """The extension waiting for approval on `req`, if any."""
        found = self.decisions.extension_round(req)
        if found is None:
            return None
        return Round(
            id=found["id"],
            add=timedelta(milliseconds=found["add_ms"]),
            by=found["by"],
            reason=found["reason"],
            required=found["required"],
            approvers=found["approvers"],
        )

    def approve(self, request_id: str, user: str) -> tuple[Outcome, Round]:
        """`user` approves the extension waiting on `request_id`: an approver of the request,
        neither the one who asked nor (unless self-approval is allowed) its requester, once."""
        for _ in range(ATTEMPTS):
            req = self.decisions.load(request_id)
            rnd = self.round(req)
            if req.status != Status.ACTIVE or rnd is None:
                if req.status != Status.ACTIVE:
                    raise self.decisions.refuse_decided(req, user, "extension_approval", req.status.value)
                self.decisions.refused(req, user, "extension_approval", "no extension is waiting")
                raise E.NotActive("No extension of this grant is waiting for approval.")
            if not self.rules.is_approver(req.action, user, req):
                self.decisions.refused(req, user, "extension_approval", "not an approver")
                raise E.NotAnApprover(f"You are not an approver for *{req.action}*, so your approval does not count.")
            own = user == rnd.by or (user == req.requester_slack_id and not self.rules.self_approval_allowed(req))
            if own:
                self.decisions.refused(req, user, "extension_approval", "self-approval")
                raise E.SelfApproval(
                    "You asked for this extension (or the grant is yours): someone else must approve it."
                )
            policy = self.policy_for(req)
            old = to_ms(req.expires_at)
            new = from_ms(old + int(rnd.add.total_seconds() * 1000))
            details = {
                "by": rnd.by,
                "reason": rnd.reason,
                "added_seconds": int(rnd.add.total_seconds()),
                "old_expires_at": rfc3339(req.expires_at),
                "new_expires_at": rfc3339(new),
                "max_total_seconds": int(policy.max_total.total_seconds()),
            }
            out = self.store.extend_approve(
                req.id,
                old,
                int(policy.max_total.total_seconds() * 1000),
                user,
                rnd.id,
                now_ms(),
                given=self._event("extension.approval_given", req, user, {"round": rnd.id}),
                extended=self._event("grant.extended", req, rnd.by, {**details, "approved_by": [*rnd.approvers, user]}),
            )
            if out.result == "stale":
                continue
            if out.result == "duplicate":
                self.decisions.refused(req, user, "extension_approval", "already approved by this user")
                raise E.AlreadyApproved()
            if out.result == "no_round":
                raise E.NotActive("No extension of this grant is waiting for approval.")
            self._refusal(out, req)
            return out, self.round(req) or rnd
        raise E.JitError("Many clicks arrived at once and yours was not recorded; please click again.")

    # ---------------------------------------------------------------- the credential

    def reissue(self, request_id: str, backend_for: BackendFor) -> int:
        """`reissue:<id>`: tell the backend the window's new end (a token's `exp`, PostgreSQL's
        VALID UNTIL and session bounds); keep what it re-issued. Returns ms to wait and retry
        (the window moved again while the backend worked), else 0."""
        req = self.store.get(request_id)
        if req is None or req.status != Status.ACTIVE or req.expires_at is None:
            return 0
        blob = self.store.credential_blob(req.id)
        if blob is None:
            return 0
        backend = backend_for(req.action, req.policy_sha256)
        extend = getattr(backend, "extend", None)
        if extend is None:
            return 0
        credential = extend(grant_request(req), self.vault.open(blob))
        if credential is None:
            return 0  # nothing at the target depends on the window's end: jit's revoke is the bound
        out = self.store.reissued(
            req.id,
            to_ms(req.expires_at),
            self.vault.seal(credential),
            now_ms(),
            self.audit.event_body(
                "credential.reissued",
                request_id=req.id,
                action=req.action,
                actor="jit",
                details={"backend": backend.type, "expires_at": rfc3339(req.expires_at)},
            ),
        )
        return 1 if out.result == "stale" else 0

    # ---------------------------------------------------------------- helpers

    def _event(self, event: str, req: AccessRequest, actor: str, details: dict) -> str:
        return self.audit.event_body(event, request_id=req.id, action=req.action, actor=actor, details=details)

    @staticmethod
    def _refusal(out: Outcome, req: AccessRequest) -> None:
        if out.result == "missing":
            raise E.NotFound("That request no longer exists.")
        if out.result == "not_active":
            raise E.NotActive(f"only an active grant can be extended; this request is {out.status or 'not active'}")
        if out.result == "over":
            raise E.OverMaxTotal(f"the extension would make the grant last longer than {req.action}'s extend.max_total")
        if out.result == "invalid":
            raise E.BadRequest("ttl: an extension must add time")
