"""The use cases: a pipeline asks, approvers decide, the credential is fetched or released."""

from __future__ import annotations

import hashlib
import re
import secrets as _secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bot import metrics
from bot.domain import errors as E
from bot.domain.audit import AuditLog
from bot.domain.clock import now, parse_duration, to_ms
from bot.domain.conditions import (
    BreakGlassOnly,
    NoBreakGlass,
    NotBreakGlassApprover,
    auto_decision,
    check_environment,
    check_justification,
    utc_day,
)
from bot.domain.policy import Policy
from bot.domain.requests import UNDECIDED, AccessRequest, Status
from bot.domain.secrets import Vault, new_token, token_hash
from bot.domain.store import Outcome, Store
from bot.domain.windows import OutsideWindow

MAX_REASON = 500
CONTEXT_KEYS = ("repository", "ref", "commit", "run_url", "environment")


class Directory(Protocol):
    """Who is in a Slack user group (cached; implemented against Slack's API)."""

    def members(self, group_id: str) -> set[str]: ...


class RequestBody(BaseModel):
    """`POST /v1/requests`."""

    # strict: JSON types as documented (no `"ttl": true` read as 1 s, no `"yes"` as true)
    model_config = ConfigDict(extra="forbid", strict=True)

    action: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=1, max_length=MAX_REASON)
    ttl: int | str | None = None
    requested_by: str | None = Field(None, min_length=1, max_length=200)
    context: dict[str, str] = Field(default_factory=dict, max_length=20)
    #: Ask for break glass: allowed outside the action's windows, approved only by a
    #: break-glass approver (alone, with a written justification).
    break_glass: bool = False

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
        policies: Callable[[str], Policy | None] | None = None,
        on_break_glass: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.audit = audit
        self._policy = policy
        self.directory = directory
        self.vault = vault
        #: A policy version by its sha256 (the rules an in-flight request was created under).
        self._policies = policies
        #: Told the request id when break glass is used (alerts the security channel).
        self._on_break_glass = on_break_glass

    @property
    def policy(self) -> Policy:
        return self._policy()

    def policy_of(self, req: AccessRequest) -> Policy:
        """The policy `req` was created under; the current one if that version is gone."""
        current = self.policy
        if not req.policy_sha256 or req.policy_sha256 == current.sha256 or self._policies is None:
            return current
        return self._policies(req.policy_sha256) or current

    @property
    def metrics(self) -> metrics.Metrics:
        return metrics.Metrics(self.store.r)

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
        break_glass = policy.break_glass_for(body.action)
        if body.break_glass and break_glass is None:
            raise NoBreakGlass(f"{body.action} has no break-glass approvers; ask without break_glass")
        windows = policy.windows_for(body.action)
        outside = bool(windows) and not windows.is_open(t)
        if outside and not body.break_glass:
            earlier = self._earlier(pipeline, idempotency_key)
            if earlier is not None:
                return earlier
            raise OutsideWindow(body.action, windows.next_opening(t), windows.specs)
        check_environment(policy, body.action, context)
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
        extra = {"break_glass": "requested"} if body.break_glass else {}
        if outside:
            extra["outside_window"] = "1"
        created, rid = self.store.create(req, idem, to_ms(t), extra)
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
                **({"break_glass": True, "outside_window": outside} if body.break_glass else {}),
            },
        )
        self.metrics.request(req.action, "created")
        if not body.break_glass:
            req = self._try_auto_approve(policy, req, verified, t) or req
        return Created(req, token, True)

    def _earlier(self, pipeline: str, idempotency_key: str | None) -> Created | None:
        """The request an Idempotency-Key already made (a retry after its window closed)."""
        if not idempotency_key:
            return None
        from bot.domain import keys

        key = keys.idempotency(pipeline, hashlib.sha256(idempotency_key.encode()).hexdigest())
        rid = self.store.r.get(key)
        existing = self.store.get(rid) if rid else None
        if existing is None:
            return None
        return Created(existing, self.vault.open(existing.request_token_enc), False)

    def _try_auto_approve(
        self, policy: Policy, req: AccessRequest, verified: dict[str, Any] | None, t
    ) -> AccessRequest | None:
        """Approve at once when the action's auto_approve rule holds on the verified context."""
        from bot.domain import keys

        verified_context = dict(verified.get("context") or {}) if verified else None
        decision = auto_decision(policy, req.action, verified_context, req.ttl)
        if decision is None:
            return None
        why = decision.why
        if decision.eligible:
            counter = keys.auto_approvals(req.pipeline, req.action, utc_day(t))
            out = self.store.auto_approve(req.id, counter, decision.max_per_day, decision.rule, to_ms(t))
            if out.result == "approved":
                self.audit.append(
                    "request.approved",
                    request_id=req.id,
                    action=req.action,
                    actor="auto",
                    details={**decision.details(), "auto_approved": True, "count_today": out.count},
                )
                self.metrics.request(req.action, "approved")
                return self.store.get(req.id)
            if out.result != "capped":
                return None  # decided some other way in between
            why = f"the daily cap of {decision.max_per_day} auto-approvals is reached"
        self.audit.append(
            "auto_approve.skipped",
            request_id=req.id,
            action=req.action,
            actor="jit",
            outcome="skipped",
            details={**decision.details(), "why": why},
        )
        return None

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
                self.metrics.request(req.action, "cancelled")
        elif req.status == Status.ACTIVE:
            self._revoke(req, actor)
        return self.store.get(req.id) or req

    # ---------------------------------------------------------------- approver side

    def is_approver(self, action: str, user: str, req: AccessRequest | None = None) -> bool:
        """Without `req`: an approver of `action` in any environment, under the current policy.
        With it: an approver of that request, under the policy it was created under."""
        if req is None:
            return self._member(user, self.policy.all_approvers(action))
        policy = self.policy_of(req)
        return self._member(user, policy.approvers_for(req.action, req.context.get("environment")))

    def is_break_glass_approver(self, req: AccessRequest, user: str) -> bool:
        bg = self.policy_of(req).break_glass_for(req.action)
        return bg is not None and self._member(user, bg.approvers)

    def _member(self, user: str, ids: list[str]) -> bool:
        if user in ids:
            return True
        return any(user in self.directory.members(g) for g in ids if g.startswith("S"))

    def is_auditor(self, user: str) -> bool:
        auditors = self.policy.model.auditors
        if user in auditors:
            return True
        return any(user in self.directory.members(g) for g in auditors if g.startswith("S"))

    def _require_approver(self, req: AccessRequest, user: str, verb: str) -> None:
        allowed = self.is_approver(req.action, user, req) or (
            verb != "approval" and self.is_break_glass_approver(req, user)
        )
        if not allowed:
            self.audit.append(
                f"{verb}.refused",
                request_id=req.id,
                action=req.action,
                actor=user,
                outcome="refused",
                details={"why": "not an approver"},
            )
            raise E.NotAnApprover(f"You are not an approver for *{req.action}*, so your {verb} does not count.")

    def _refuse_decided(self, req: AccessRequest, user: str, verb: str, status: str) -> E.AlreadyDecided:
        """A click on a request that is no longer open: audited, then refused."""
        self.audit.append(
            f"{verb}.refused", request_id=req.id, action=req.action, actor=user, outcome="refused",
            details={"why": f"already {status}"},
        )
        return E.AlreadyDecided(status)

    def _load_pending(self, request_id: str) -> AccessRequest:
        req = self.store.get(request_id)
        if req is None:
            raise E.NotFound("That request no longer exists.")
        return req

    def approve(self, request_id: str, user: str) -> Outcome:
        req = self._load_pending(request_id)
        if req.status != Status.PENDING:
            raise self._refuse_decided(req, user, "approval", req.status.value)
        if self.store.fields(req.id, "break_glass"):
            self.audit.append(
                "approval.refused", request_id=req.id, action=req.action, actor=user,
                outcome="refused", details={"why": "a break-glass request: needs a break-glass approver"},
            )
            raise BreakGlassOnly(
                "This request asked for break glass: only a break-glass approver can approve it, "
                "with the *Break glass* button and a written justification."
            )
        self._require_approver(req, user, "approval")
        action = self.policy_of(req).action(req.action)
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
            raise self._refuse_decided(req, user, "approval", out.status or "decided")
        self.audit.append(
            "approval.given",
            request_id=req.id,
            action=req.action,
            actor=user,
            details={"approvals": out.count, "required": req.approvals_required},
        )
        if out.result == "approved":
            self.audit.append("request.approved", request_id=req.id, action=req.action, actor=user)
            self.metrics.request(req.action, "approved")
            self.metrics.approval_wait(req.action, (now() - req.created_at).total_seconds())
        return out

    # ---------------------------------------------------------------- break glass

    def check_can_break_glass(self, request_id: str, user: str) -> AccessRequest:
        """May `user` break glass on this request? (Before the justification modal opens.)"""
        req = self._load_pending(request_id)
        if req.status != Status.PENDING:
            raise self._refuse_decided(req, user, "break_glass", req.status.value)
        policy = self.policy_of(req)
        if policy.break_glass_for(req.action) is None:
            raise NoBreakGlass(f"*{req.action}* has no break-glass approvers.")
        if not self.is_break_glass_approver(req, user):
            self.audit.append(
                "break_glass.refused", request_id=req.id, action=req.action, actor=user,
                outcome="refused", details={"why": "not a break-glass approver", "break_glass": True},
            )
            raise NotBreakGlassApprover(
                f"You are not a break-glass approver for *{req.action}*, so you cannot break glass."
            )
        action = policy.action(req.action)
        if not (action and action.allow_self_approval) and req.requester_slack_id == user:
            self.audit.append(
                "break_glass.refused", request_id=req.id, action=req.action, actor=user,
                outcome="refused", details={"why": "self-approval", "break_glass": True},
            )
            raise E.SelfApproval()
        return req

    def break_glass(self, request_id: str, user: str, justification: str) -> Outcome:
        """One break-glass approver approves alone: the TTL is cut to break_glass.max_ttl, the
        security channel is alerted and the audit entry is marked for follow-up review."""
        req = self.check_can_break_glass(request_id, user)
        justification = check_justification(justification)
        bg = self.policy_of(req).break_glass_for(req.action)
        assert bg is not None  # checked above
        out = self.store.break_glass(
            req.id, user, int(bg.max_ttl.total_seconds()), justification, to_ms(now())
        )
        if out.result == "missing":
            raise E.NotFound("That request no longer exists.")
        if out.result != "approved":
            raise self._refuse_decided(req, user, "break_glass", out.status or "decided")
        extra = self.store.fields(req.id, "break_glass", "outside_window")
        self.audit.append(
            "request.approved",
            request_id=req.id,
            action=req.action,
            actor=user,
            details={
                "break_glass": True,
                "follow_up_review": True,
                "justification": justification,
                "ttl_seconds": out.count,
                "requested_ttl_seconds": int(req.ttl.total_seconds()),
                "break_glass_requested": bool(extra.get("break_glass")),
                "outside_window": bool(extra.get("outside_window")),
                "security_channel": bg.security_channel,
            },
        )
        self.metrics.request(req.action, "approved")
        if self._on_break_glass is not None:
            self._on_break_glass(req.id)
        return out

    def message_facts(self, req: AccessRequest) -> dict[str, Any]:
        """What the request's Slack message shows beyond the request itself (its policy's
        description and approvers, break-glass state, the auto-approval rule)."""
        policy = self.policy_of(req)
        action = policy.action(req.action)
        extra = self.store.fields(
            req.id, "break_glass", "break_glass_by", "break_glass_justification", "auto_rule"
        )
        return {
            "description": action.description if action else "",
            "approvers": policy.approvers_for(req.action, req.context.get("environment")) or None,
            "break_glass": policy.break_glass_for(req.action) is not None,
            "break_glass_requested": bool(extra.get("break_glass")),
            "break_glass_by": extra.get("break_glass_by"),
            "justification": extra.get("break_glass_justification"),
            "auto_rule": extra.get("auto_rule"),
        }

    def check_can_deny(self, request_id: str, user: str) -> AccessRequest:
        req = self._load_pending(request_id)
        if req.status != Status.PENDING:
            raise self._refuse_decided(req, user, "denial", req.status.value)
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
            raise self._refuse_decided(req, user, "denial", out.status or "decided")
        self.audit.append(
            "request.denied", request_id=req.id, action=req.action, actor=user, details={"reason": reason}
        )
        self.metrics.request(req.action, "denied")
        return out

    def revoke_by_approver(self, request_id: str, user: str) -> AccessRequest:
        req = self._load_pending(request_id)
        self._require_approver(req, user, "revoke")
        if req.status != Status.ACTIVE:
            raise self._refuse_decided(req, user, "revoke", req.status.value)
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
            self.metrics.request(req.action if req else "", "timed_out")
        return out


def _new_id() -> str:
    """Short, unguessable, safe in URLs, Slack text and RQ job ids."""
    return _secrets.token_hex(8)
