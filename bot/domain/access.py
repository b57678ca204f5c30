"""The use cases: a pipeline asks, approvers decide, the credential is fetched or released."""

from __future__ import annotations

import hashlib
import re
import secrets as _secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bot.domain import errors as E
from bot.domain.audit import AuditLog
from bot.domain.clock import now, parse_duration, to_ms
from bot.domain.policy import Policy
from bot.domain.requests import UNDECIDED, AccessRequest, Status
from bot.domain.secrets import Vault, new_token, token_hash
from bot.domain.store import Outcome, Store

MAX_REASON = 500
CONTEXT_KEYS = ("repository", "ref", "commit", "run_url", "environment")


class Directory(Protocol):
    """Who is in a Slack user group (cached; implemented against Slack's API)."""

    def members(self, group_id: str) -> set[str]: ...


class RequestBody(BaseModel):
    """`POST /v1/requests`."""

    model_config = ConfigDict(extra="forbid")

    action: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=1, max_length=MAX_REASON)
    ttl: int | str | None = None
    requested_by: str | None = Field(None, min_length=1, max_length=200)
    context: dict[str, str] = Field(default_factory=dict, max_length=20)

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v.strip()

    @field_validator("context")
    @classmethod
    def _context(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,39}", k):
                raise ValueError(f"context key {k[:40]!r} must be lowercase letters, digits and _")
            if len(val) > 500:
                raise ValueError(f"context.{k} is longer than 500 characters")
        url = v.get("run_url")
        if url and not re.fullmatch(r"https?://[^\s<>|]+", url):
            raise ValueError("context.run_url must be an http(s) URL")
        return v


@dataclass(frozen=True)
class Created:
    request: AccessRequest
    request_token: str
    created: bool  # False when an Idempotency-Key returned an earlier request


class AccessService:
    def __init__(
        self,
        store: Store,
        audit: AuditLog,
        policy: Callable[[], Policy],
        directory: Directory,
        vault: Vault,
    ) -> None:
        self.store = store
        self.audit = audit
        self._policy = policy
        self.directory = directory
        self.vault = vault

    @property
    def policy(self) -> Policy:
        return self._policy()

    # ---------------------------------------------------------------- pipeline side

    def parse_body(self, data: Any) -> RequestBody:
        if not isinstance(data, dict):
            raise E.BadRequest("the body must be a JSON object")
        try:
            return RequestBody.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            msg = first["msg"].removeprefix("Value error, ")
            if first["type"] == "extra_forbidden":
                msg = "unknown field"
            raise E.BadRequest(f"{where}: {msg}") from None

    def create(
        self,
        pipeline: str,
        body: RequestBody,
        idempotency_key: str | None = None,
        verified: dict[str, Any] | None = None,
    ) -> Created:
        """A pipeline asks for access. `verified` holds OIDC claims that override the body."""
        policy = self.policy
        action = policy.action(body.action)
        if action is None:
            raise E.UnknownAction(f"unknown action {body.action!r}")
        allowed = policy.pipelines.get(pipeline)
        if allowed is None or body.action not in allowed.actions:
            raise E.ActionNotAllowed(f"pipeline {pipeline!r} may not request {body.action!r}")
        if body.ttl is None:
            ttl = action.ttl.default
        else:
            try:
                ttl = parse_duration(body.ttl)
            except ValueError as e:
                raise E.BadRequest(f"ttl: {e}") from None
        if ttl > action.ttl.max:
            raise E.BadRequest(
                f"ttl: {int(ttl.total_seconds())}s is longer than {body.action}'s max of "
                f"{int(action.ttl.max.total_seconds())}s"
            )
        context = dict(body.context)
        requested_by = body.requested_by
        if verified:
            context.update(verified.get("context", {}))
            requested_by = verified.get("requested_by") or requested_by

        t = now()
        token = new_token()
        req = AccessRequest(
            id=_new_id(),
            action=body.action,
            pipeline=pipeline,
            reason=body.reason,
            ttl=ttl,
            status=Status.PENDING,
            created_at=t,
            pending_until=t + policy.pending_timeout_for(body.action),
            approvals_required=action.approvals_required,
            channel=policy.channel_for(body.action),
            requested_by=requested_by,
            requester_slack_id=policy.slack_user_for(requested_by),
            context=context,
            verified=bool(verified),
            policy_sha256=policy.sha256,
            request_token_hash=token_hash(token),
            request_token_enc=self.vault.seal(token),
        )
        idem = None
        if idempotency_key:
            from bot.domain import keys

            idem = keys.idempotency(pipeline, hashlib.sha256(idempotency_key.encode()).hexdigest())
        created, rid = self.store.create(req, idem, to_ms(t))
        if not created:
            existing = self.store.get(rid)
            if existing is None:  # expired between the two reads; treat the key as fresh
                raise E.NotFound("the request for this Idempotency-Key is gone; retry without it")
            return Created(existing, self.vault.open(existing.request_token_enc), False)
        self.audit.append(
            "request.created",
            request_id=req.id,
            action=req.action,
            actor=f"pipeline:{pipeline}",
            details={
                "reason": req.reason,
                "ttl_seconds": int(ttl.total_seconds()),
                "requested_by": requested_by,
                "context": context,
                "verified": bool(verified),
                "policy_sha256": policy.sha256,
            },
        )
        return Created(req, token, True)

    def authorize_follow_up(self, request_id: str, pipeline: str | None, bearer: str) -> AccessRequest:
        """The creating pipeline's token or the request_token may read a request; else 404."""
        req = self.store.get(request_id)
        if req is None:
            raise E.NotFound()
        if pipeline is not None and pipeline == req.pipeline:
            return req
        if req.request_token_hash and _secrets.compare_digest(token_hash(bearer), req.request_token_hash):
            return req
        raise E.NotFound()

    def credential(self, req: AccessRequest) -> tuple[dict[str, Any], AccessRequest]:
        if req.status in UNDECIDED or req.status == Status.PENDING:
            raise E.NotActive(f"the request is {req.status.value}; the credential is not issued yet")
        if req.status != Status.ACTIVE or (req.expires_at and req.expires_at <= now()):
            raise E.Gone(f"the credential is gone (request {req.status.value})")
        blob = self.store.credential_blob(req.id)
        if blob is None:
            raise E.Gone("the credential is gone")
        self.audit.append(
            "credential.fetched", request_id=req.id, action=req.action, actor=f"pipeline:{req.pipeline}"
        )
        return self.vault.open(blob), req

    def release(self, req: AccessRequest) -> AccessRequest:
        """DELETE: the pipeline cancels a pending request or ends its grant early."""
        actor = f"pipeline:{req.pipeline}"
        if req.status in (Status.PENDING, Status.APPROVED):
            out = self.store.close(req.id, Status.CANCELLED, to_ms(now()), {Status.PENDING, Status.APPROVED}, revoked_by=actor)
            if out.ok:
                self.audit.append("request.cancelled", request_id=req.id, action=req.action, actor=actor)
        elif req.status == Status.ACTIVE:
            self._revoke(req, actor)
        return self.store.get(req.id) or req

    # ---------------------------------------------------------------- approver side

    def is_approver(self, action: str, user: str) -> bool:
        a = self.policy.action(action)
        if a is None:
            return False
        if user in a.approvers:
            return True
        return any(user in self.directory.members(g) for g in a.approvers if g.startswith("S"))

    def is_auditor(self, user: str) -> bool:
        auditors = self.policy.model.auditors
        if user in auditors:
            return True
        return any(user in self.directory.members(g) for g in auditors if g.startswith("S"))

    def _require_approver(self, req: AccessRequest, user: str, verb: str) -> None:
        if not self.is_approver(req.action, user):
            self.audit.append(
                f"{verb}.refused",
                request_id=req.id,
                action=req.action,
                actor=user,
                outcome="refused",
                details={"why": "not an approver"},
            )
            raise E.NotAnApprover(f"You are not an approver for *{req.action}*, so your {verb} does not count.")

    def _load_pending(self, request_id: str) -> AccessRequest:
        req = self.store.get(request_id)
        if req is None:
            raise E.NotFound("That request no longer exists.")
        return req

    def approve(self, request_id: str, user: str) -> Outcome:
        req = self._load_pending(request_id)
        if req.status != Status.PENDING:
            raise E.AlreadyDecided(req.status.value)
        self._require_approver(req, user, "approval")
        action = self.policy.action(req.action)
        allow_self = bool(action and action.allow_self_approval)
        if not allow_self and req.requester_slack_id == user:
            self.audit.append(
                "approval.refused",
                request_id=req.id,
                action=req.action,
                actor=user,
                outcome="refused",
                details={"why": "self-approval"},
            )
            raise E.SelfApproval()
        out = self.store.approve(req.id, user, to_ms(now()))
        if out.result == "duplicate":
            self.audit.append(
                "approval.refused", request_id=req.id, action=req.action, actor=user,
                outcome="refused", details={"why": "already approved by this user"},
            )
            raise E.AlreadyApproved()
        if out.result == "missing":
            raise E.NotFound("That request no longer exists.")
        if out.result == "decided":
            raise E.AlreadyDecided(out.status or "decided")
        self.audit.append(
            "approval.given",
            request_id=req.id,
            action=req.action,
            actor=user,
            details={"approvals": out.count, "required": req.approvals_required},
        )
        if out.result == "approved":
            self.audit.append("request.approved", request_id=req.id, action=req.action, actor=user)
        return out

    def check_can_deny(self, request_id: str, user: str) -> AccessRequest:
        req = self._load_pending(request_id)
        if req.status != Status.PENDING:
            raise E.AlreadyDecided(req.status.value)
        self._require_approver(req, user, "denial")
        return req

    def deny(self, request_id: str, user: str, reason: str) -> Outcome:
        req = self.check_can_deny(request_id, user)
        reason = reason.strip()[:MAX_REASON]
        if not reason:
            raise E.BadRequest("A reason is required to deny a request.")
        out = self.store.close(
            req.id, Status.DENIED, to_ms(now()), {Status.PENDING}, decided_by=user, deny_reason=reason
        )
        if not out.ok:
            raise E.AlreadyDecided(out.status or "decided")
        self.audit.append(
            "request.denied", request_id=req.id, action=req.action, actor=user, details={"reason": reason}
        )
        return out

    def revoke_by_approver(self, request_id: str, user: str) -> AccessRequest:
        req = self._load_pending(request_id)
        self._require_approver(req, user, "revoke")
        if req.status != Status.ACTIVE:
            raise E.AlreadyDecided(req.status.value)
        self._revoke(req, user)
        return self.store.get(req.id) or req

    def _revoke(self, req: AccessRequest, actor: str) -> None:
        out = self.store.revoke(req.id, actor, to_ms(now()))
        if out.ok:
            self.audit.append("grant.revoke_requested", request_id=req.id, action=req.action, actor=actor)
        elif out.result == "decided":
            raise E.AlreadyDecided(out.status or "decided")

    # ---------------------------------------------------------------- timers

    def time_out(self, request_id: str) -> Outcome:
        out = self.store.close(request_id, Status.TIMED_OUT, to_ms(now()), {Status.PENDING})
        if out.ok:
            req = self.store.get(request_id)
            self.audit.append(
                "request.timed_out", request_id=request_id, action=req.action if req else None, actor="jit"
            )
        return out


def _new_id() -> str:
    """Short, unguessable, safe in URLs, Slack text and RQ job ids."""
    return _secrets.token_hex(8)
