"""The use cases: a pipeline asks, approvers decide, the credential is fetched or released.

In-flight requests follow the stricter of two policies: the one they were created under and the
one in force now. Tightening (an approver or group removed, approvals_required raised, an action
removed, self-approval forbidden, a window added) applies to them at once; loosening applies to
new requests only.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets as _secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bot.store import metrics
from bot.core import errors as E
from bot.store import keys
from bot.store.audit import AuditLog
from bot.core.clock import from_ms, now, now_ms, parse_duration, rfc3339, to_ms
from bot.core.policy.rules import (
    BreakGlassOnly,
    NoBreakGlass,
    NotBreakGlassApprover,
    auto_decision,
    check_environment,
    check_justification,
    utc_day,
)
from bot.core.identity import encodable
from bot.core.policy.load import Policy
from bot.store.refusals import record_refusal
from bot.core.model import UNDECIDED, AccessRequest, Status
from bot.core.crypto import Vault, new_token, token_hash
from bot.store.requests import Outcome, Store
from bot.core.policy.windows import OutsideWindow

MAX_REASON = 500
#: Context keys that route a request's approval (approvers_by_environment): on a verified
#: request they must come from the token, never from the body.
ROUTING_KEYS = ("environment",)
#: The verified claims that name one CI run (GitLab pipeline; GitHub run and attempt). A
#: follow-up carrying an OIDC token must name the same run as the request's own token did.
RUN_BINDINGS = (("repository", "pipeline_id"), ("repository", "run_id", "run_attempt"))


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

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        """Every string must be storable (and auditable) as UTF-8: a lone surrogate is a 400
        here, before anything is written."""
        for where, value in _strings(data):
            if not encodable(value):
                raise ValueError(f"{where} is not valid Unicode text")
        return data

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

    def fingerprint(self, pipeline: str) -> str:
        """What an Idempotency-Key promises: the same pipeline asking the same thing."""
        raw = json.dumps([pipeline, self.model_dump()], sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(raw.encode()).hexdigest()


def _strings(data: Any, where: str = "body"):
    if isinstance(data, str):
        yield where, data
    elif isinstance(data, dict):
        for k, v in data.items():
            name = f"{where}.{k}" if isinstance(k, str) and encodable(k) else where
            if isinstance(k, str):
                yield f"{where} key", k
            yield from _strings(v, name)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _strings(v, f"{where}[{i}]")


@dataclass(frozen=True)
class Created:
    request: AccessRequest
    request_token: str
    created: bool  # False when an Idempotency-Key returned an earlier request


@dataclass(frozen=True)
class FollowUp:
    """A caller allowed to read or use one request, and how it proved it (for the audit)."""

    request: AccessRequest
    via: str


class AccessService:
    def __init__(
        self,
        store: Store,
        audit: AuditLog,
        policy: Callable[[], Policy],
        directory: Directory,
        vault: Vault,
        policies: Callable[[str], Policy | None] | None = None,
    ) -> None:
        self.store = store
        self.audit = audit
        self._policy = policy
        self.directory = directory
        self.vault = vault
        #: A policy version by its sha256 (the rules an in-flight request was created under).
        self._policies = policies

    @property
    def policy(self) -> Policy:
        return self._policy()

    def policy_of(self, req: AccessRequest) -> Policy:
        """The policy `req` was created under; the current one if that version is gone."""
        current = self.policy
        if not req.policy_sha256 or req.policy_sha256 == current.sha256 or self._policies is None:
            return current
        return self._policies(req.policy_sha256) or current

    def _both(self, req: AccessRequest) -> tuple[Policy, Policy]:
        """(creation policy, current policy): in-flight requests follow the stricter of the two."""
        return self.policy_of(req), self.policy

    @property
    def metrics(self) -> metrics.Metrics:
        return metrics.Metrics(self.store.r)

    def _event(self, event: str, req: AccessRequest | None = None, **kw: Any) -> str:
        if req is not None:
            kw.setdefault("request_id", req.id)
            kw.setdefault("action", req.action)
        return self.audit.event_body(event, **kw)

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
            if not encodable(where):
                where = "body"
            raise E.BadRequest(f"{where}: {msg}"[:300]) from None

    def create(
        self,
        pipeline: str,
        body: RequestBody,
        idempotency_key: str | None = None,
        verified: dict[str, Any] | None = None,
    ) -> Created:
        """A pipeline asks for access. `verified` holds what an OIDC token vouches for."""
        policy = self.policy
        action = policy.action(body.action)
        if action is None:
            raise E.UnknownAction(f"unknown action {body.action!r}")
        allowed = policy.pipelines.get(pipeline)
        if allowed is None or body.action not in allowed.actions:
            raise E.ActionNotAllowed(f"pipeline {pipeline!r} may not request {body.action!r}")
        if idempotency_key is not None and not encodable(idempotency_key):
            raise E.BadRequest("Idempotency-Key is not valid text")
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
        context, requested_by, verified_keys = _merge_verified(body, verified)

        t = from_ms(now_ms())  # millisecond precision: the 201 and every later read agree
        break_glass = policy.break_glass_for(body.action)
        if body.break_glass and break_glass is None:
            raise NoBreakGlass(f"{body.action} has no break-glass approvers; ask without break_glass")
        fingerprint = body.fingerprint(pipeline)
        windows = policy.windows_for(body.action)
        outside = bool(windows) and not windows.is_open(t)
        if outside and not body.break_glass:
            earlier = self._earlier(pipeline, idempotency_key, fingerprint)
            if earlier is not None:
                return earlier
            raise OutsideWindow(body.action, windows.next_opening(t), windows.specs)
        check_environment(policy, body.action, context)
        requester = policy.slack_user_for(requested_by)
        if (
            requester is None
            and not action.allow_self_approval
            and policy.unknown_requester_for(body.action) == "refuse"
        ):
            raise E.RequesterUnknown(
                f"{body.action} forbids self-approval and refuses requests from unknown people: "
                "requested_by must name a person listed in the policy's `people` "
                "(or come from a verified OIDC token mapped there)"
            )
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
            requester_slack_id=requester,
            context=context,
            verified=bool(verified),
            verified_keys=verified_keys,
            policy_sha256=policy.sha256,
            request_token_hash=token_hash(token),
            request_token_enc=self.vault.seal(token),
        )
        idem = None
        if idempotency_key:
            idem = (_idempotency_key(pipeline, idempotency_key), fingerprint)
        extra = {"break_glass": "requested"} if body.break_glass else {}
        if outside:
            extra["outside_window"] = "1"
        event = self._event(
            "request.created",
            req,
            actor=f"pipeline:{pipeline}",
            details={
                "reason": req.reason,
                "ttl_seconds": int(ttl.total_seconds()),
                "requested_by": requested_by,
                "requester": requester,
                "context": context,
                "verified": bool(verified),
                "verified_fields": list(verified_keys),
                "policy_sha256": policy.sha256,
                **({"break_glass": True, "outside_window": outside} if body.break_glass else {}),
            },
        )
        created, value = self.store.create(req, idem, to_ms(t), event, extra)
        if not created:
            return self._existing(value, fingerprint)
        self.metrics.request(req.action, "created")
        if not body.break_glass:
            req = self._try_auto_approve(policy, req, verified, t) or req
        return Created(req, token, True)

    def _existing(self, value: str, fingerprint: str) -> Created:
        """The request an Idempotency-Key already made; a different body is an error (422)."""
        rid, _, seen = value.partition("|")
        if seen and seen != fingerprint:
            raise E.IdempotencyKeyReused(
                "this Idempotency-Key was already used for a different request; use a new key"
            )
        existing = self.store.get(rid)
        if existing is None:  # expired between the two reads; treat the key as fresh
            raise E.NotFound("the request for this Idempotency-Key is gone; retry without it")
        return Created(existing, self.vault.open(existing.request_token_enc), False)

    def _earlier(self, pipeline: str, idempotency_key: str | None, fingerprint: str) -> Created | None:
        """The request an Idempotency-Key already made (a retry after its window closed)."""
        if not idempotency_key:
            return None
        value = self.store.r.get(_idempotency_key(pipeline, idempotency_key))
        return self._existing(value, fingerprint) if value else None

    def _try_auto_approve(
        self, policy: Policy, req: AccessRequest, verified: dict[str, Any] | None, t: datetime
    ) -> AccessRequest | None:
        """Approve at once when the action's auto_approve rule holds on the verified context."""
        verified_context = dict(verified.get("context") or {}) if verified else None
        decision = auto_decision(policy, req.action, verified_context, req.ttl)
        if decision is None:
            return None
        why = decision.why
        if decision.eligible:
            counter = keys.auto_approvals(req.pipeline, req.action, utc_day(t))
            event = self._event(
                "request.approved",
                req,
                actor="auto",
                details={**decision.details(), "auto_approved": True},
            )
            out = self.store.auto_approve(req.id, counter, decision.max_per_day, decision.rule, to_ms(t), event)
            if out.result == "approved":
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

    def authorize_follow_up(
        self, request_id: str, bearer: str, verified: dict[str, Any] | None = None, pipeline: str | None = None
    ) -> FollowUp:
        """Only the request_token returned at creation, or an OIDC token of the same pipeline and
        the same CI run, may read or use a request; anyone else gets 404."""
        req = self.store.get(request_id)
        if req is None:
            raise E.NotFound()
        if req.request_token_hash and _secrets.compare_digest(token_hash(bearer), req.request_token_hash):
            return FollowUp(req, "request_token")
        if verified is not None and pipeline == req.pipeline and req.verified:
            run = _same_run(req, dict(verified.get("context") or {}))
            if run is not None:
                return FollowUp(req, f"oidc:{run}")
        raise E.NotFound()

    def credential(self, follow_up: FollowUp) -> tuple[dict[str, Any], AccessRequest]:
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

    def release(self, follow_up: FollowUp) -> AccessRequest:
        """DELETE: the pipeline cancels a pending request or ends its grant early."""
        req = follow_up.request
        actor = f"pipeline:{req.pipeline}"
        if req.status in (Status.PENDING, Status.APPROVED):
            self._close(req, Status.CANCELLED, {Status.PENDING, Status.APPROVED}, actor, revoked_by=actor)
        elif req.status == Status.ACTIVE:
            self._revoke(req, actor)
        return self.store.get(req.id) or req

    # ---------------------------------------------------------------- who may do what

    def _member(self, user: str, ids: list[str]) -> bool:
        if user in ids:
            return True
        return any(user in self.directory.members(g) for g in ids if g.startswith("S"))

    def is_approver(self, action: str, user: str, req: AccessRequest | None = None) -> bool:
        """Without `req`: an approver of `action` in any environment, under the current policy.
        With it: an approver of that request under both its creation policy and the current one."""
        if req is None:
            return self._member(user, self.policy.all_approvers(action))
        env = req.context.get("environment")
        return all(self._member(user, p.approvers_for(req.action, env)) for p in self._both(req))

    def is_break_glass_approver(self, req: AccessRequest, user: str) -> bool:
        groups = [p.break_glass_for(req.action) for p in self._both(req)]
        return all(bg is not None and self._member(user, bg.approvers) for bg in groups)

    def is_auditor(self, user: str) -> bool:
        return self._member(user, list(self.policy.model.auditors))

    def may_view(self, req: AccessRequest, user: str) -> bool:
        """`/jit status <id>`: its approvers, auditors and its requester (or everyone, by policy)."""
        if self.policy.model.defaults.status_visibility == "everyone":
            return True
        if user == req.requester_slack_id or self.is_auditor(user):
            return True
        env = req.context.get("environment")
        return any(self._member(user, p.approvers_for(req.action, env)) for p in self._both(req))

    def approvals_required(self, req: AccessRequest) -> int:
        creation, current = self._both(req)
        needed = [req.approvals_required]
        needed += [a.approvals_required for p in (creation, current) if (a := p.action(req.action))]
        return max(needed)

    def self_approval_allowed(self, req: AccessRequest) -> bool:
        return all((a := p.action(req.action)) is not None and a.allow_self_approval for p in self._both(req))

    def _windows_until(self, req: AccessRequest, at: datetime) -> tuple[bool, datetime | None]:
        """Whether the action's change windows (creation and current policy) are open at `at`,
        and when they close (None: no windows). Break glass is not bound by windows."""
        if self.store.fields(req.id, "break_glass_by"):
            return True, None
        until = None
        for p in self._both(req):
            windows = p.windows_for(req.action)
            if not windows:
                continue
            if not windows.is_open(at):
                return False, None
            end = windows.open_until(at)
            until = end if until is None or (end is not None and end < until) else until
        return True, until

    def grant_terms(self, req: AccessRequest, at: datetime) -> tuple[datetime | None, str | None]:
        """(the latest `expires_at` the rules allow, why the grant may not be issued at all).
        A grant that would outlast its change window is cut at the window's end."""
        if self.policy.action(req.action) is None:
            return None, "the action was removed from the policy"
        open_, until = self._windows_until(req, at)
        if not open_:
            return None, "the change window closed before the grant could be issued"
        return until, None

    def _require_approver(self, req: AccessRequest, user: str, verb: str) -> None:
        allowed = self.is_approver(req.action, user, req) or (
            verb != "approval" and self.is_break_glass_approver(req, user)
        )
        if not allowed:
            self._refused(req, user, verb, "not an approver")
            raise E.NotAnApprover(f"You are not an approver for *{req.action}*, so your {verb} does not count.")

    def _refused(self, req: AccessRequest, user: str, verb: str, why: str, **details: Any) -> None:
        """Audited, at most so many per user and minute (bot/store/refusals.py): clicking a
        refused button in a loop cannot grow the trail without bound."""
        record_refusal(
            self.store.r,
            self.audit,
            f"{verb}.refused",
            actor=user,
            request_id=req.id,
            action=req.action,
            details={"why": why, **details},
        )

    def _refuse_decided(self, req: AccessRequest, user: str, verb: str, status: str) -> E.AlreadyDecided:
        """A click on a request that is no longer open: audited, then refused."""
        self._refused(req, user, verb, f"already {status}")
        return E.AlreadyDecided(status)

    def _load(self, request_id: str) -> AccessRequest:
        req = self.store.get(request_id)
        if req is None:
            raise E.NotFound("That request no longer exists.")
        return req

    # ---------------------------------------------------------------- approver side

    def approve(self, request_id: str, user: str) -> Outcome:
        req = self._load(request_id)
        if req.status != Status.PENDING:
            raise self._refuse_decided(req, user, "approval", req.status.value)
        if self.store.fields(req.id, "break_glass"):
            self._refused(req, user, "approval", "a break-glass request: needs a break-glass approver")
            raise BreakGlassOnly(
                "This request asked for break glass: only a break-glass approver can approve it, "
                "with the *Break glass* button and a written justification."
            )
        if self.policy.action(req.action) is None:
            self._refused(req, user, "approval", "the action was removed from the policy")
            raise E.NotAnApprover(f"*{req.action}* is no longer in the policy; this request cannot be approved.")
        self._require_approver(req, user, "approval")
        if not self.self_approval_allowed(req) and req.requester_slack_id == user:
            self._refused(req, user, "approval", "self-approval")
            raise E.SelfApproval()
        required = self.approvals_required(req)
        discounted = [u for u in req.approved_by if u != user and not self.is_approver(req.action, u, req)]
        counted = len(req.approvals) - len(discounted)
        t = now()
        if counted + 1 >= required:
            open_, _ = self._windows_until(req, t)
            if not open_:
                self._refused(req, user, "approval", "outside the change window")
                windows = self.policy.windows_for(req.action)
                nxt = windows.next_opening(t) if windows else None
                when = f" It opens again at {rfc3339(nxt)}." if nxt else ""
                raise E.WindowClosed(
                    f"*{req.action}* may only be granted during its change windows, and none is open now.{when}"
                )
        out = self.store.approve(
            req.id,
            user,
            to_ms(t),
            required=required,
            discounted=discounted,
            given=self._event("approval.given", req, actor=user),
            approved=self._event("request.approved", req, actor=user),
        )
        if out.result == "duplicate":
            self._refused(req, user, "approval", "already approved by this user")
            raise E.AlreadyApproved()
        if out.result == "missing":
            raise E.NotFound("That request no longer exists.")
        if out.result == "decided":
            raise self._refuse_decided(req, user, "approval", out.status or "decided")
        if out.result == "approved":
            self.metrics.request(req.action, "approved")
            self.metrics.approval_wait(req.action, (now() - req.created_at).total_seconds())
        return out

    def approvals_left(self, req: AccessRequest) -> int:
        return max(self.approvals_required(req) - len(req.approvals), 0)

    # ---------------------------------------------------------------- break glass

    def check_can_break_glass(self, request_id: str, user: str) -> AccessRequest:
        """May `user` break glass on this request? (Before the justification modal opens.)"""
        req = self._load(request_id)
        if req.status != Status.PENDING:
            raise self._refuse_decided(req, user, "break_glass", req.status.value)
        if any(p.break_glass_for(req.action) is None for p in self._both(req)):
            raise NoBreakGlass(f"*{req.action}* has no break-glass approvers.")
        if not self.is_break_glass_approver(req, user):
            self._refused(req, user, "break_glass", "not a break-glass approver", break_glass=True)
            raise NotBreakGlassApprover(
                f"You are not a break-glass approver for *{req.action}*, so you cannot break glass."
            )
        if not self.self_approval_allowed(req) and req.requester_slack_id == user:
            self._refused(req, user, "break_glass", "self-approval", break_glass=True)
            raise E.SelfApproval()
        return req

    def break_glass(self, request_id: str, user: str, justification: str) -> Outcome:
        """One break-glass approver approves alone: the TTL is cut to break_glass.max_ttl, the
        security channel is alerted (a due-queue item, retried until delivered) and the audit
        entry is marked for follow-up review."""
        req = self.check_can_break_glass(request_id, user)
        justification = check_justification(justification)
        max_ttl = min(
            int(bg.max_ttl.total_seconds()) for p in self._both(req) if (bg := p.break_glass_for(req.action))
        )
        extra = self.store.fields(req.id, "break_glass", "outside_window")
        bg = self.policy.break_glass_for(req.action)
        event = self._event(
            "request.approved",
            req,
            actor=user,
            details={
                "break_glass": True,
                "follow_up_review": True,
                "justification": justification,
                "requested_ttl_seconds": int(req.ttl.total_seconds()),
                "break_glass_requested": bool(extra.get("break_glass")),
                "outside_window": bool(extra.get("outside_window")),
                "security_channel": bg.security_channel if bg else None,
            },
        )
        out = self.store.break_glass(req.id, user, max_ttl, justification, to_ms(now()), event)
        if out.result == "missing":
            raise E.NotFound("That request no longer exists.")
        if out.result != "approved":
            raise self._refuse_decided(req, user, "break_glass", out.status or "decided")
        self.metrics.request(req.action, "approved")
        return out

    def message_facts(self, req: AccessRequest) -> dict[str, Any]:
        """What the request's Slack message shows beyond the request itself (its policy's
        description and approvers, break-glass state, the auto-approval rule, whether
        self-approval can be ruled out)."""
        policy = self.policy_of(req)
        action = policy.action(req.action)
        extra = self.store.fields(
            req.id, "break_glass", "break_glass_by", "break_glass_justification", "auto_rule", "cut_by_window"
        )
        if self.self_approval_allowed(req):
            self_approval = "allowed"
        elif req.requester_slack_id:
            self_approval = "enforced"
        else:
            self_approval = "unknown_requester"
        return {
            "description": action.description if action else "",
            "approvers": policy.approvers_for(req.action, req.context.get("environment")) or None,
            "break_glass": policy.break_glass_for(req.action) is not None,
            "break_glass_requested": bool(extra.get("break_glass")),
            "break_glass_by": extra.get("break_glass_by"),
            "justification": extra.get("break_glass_justification"),
            "auto_rule": extra.get("auto_rule"),
            "self_approval": self_approval,
            "cut_by_window": bool(extra.get("cut_by_window")),
        }

    def check_can_deny(self, request_id: str, user: str) -> AccessRequest:
        req = self._load(request_id)
        if req.status != Status.PENDING:
            raise self._refuse_decided(req, user, "denial", req.status.value)
        self._require_approver(req, user, "denial")
        return req

    def deny(self, request_id: str, user: str, reason: str) -> Outcome:
        req = self.check_can_deny(request_id, user)
        reason = reason.strip()[:MAX_REASON]
        if not reason or not encodable(reason):
            raise E.BadRequest("A reason is required to deny a request.")
        out = self.store.close(
            req.id,
            Status.DENIED,
            to_ms(now()),
            {Status.PENDING},
            self._event("request.denied", req, actor=user, details={"reason": reason}),
            decided_by=user,
            deny_reason=reason,
        )
        if not out.ok:
            raise self._refuse_decided(req, user, "denial", out.status or "decided")
        self.metrics.request(req.action, "denied")
        return out

    def revoke_by_approver(self, request_id: str, user: str) -> AccessRequest:
        req = self._load(request_id)
        self._require_approver(req, user, "revoke")
        if req.status != Status.ACTIVE:
            raise self._refuse_decided(req, user, "revoke", req.status.value)
        self._revoke(req, user)
        return self.store.get(req.id) or req

    def _revoke(self, req: AccessRequest, actor: str) -> None:
        out = self.store.revoke(
            req.id, actor, to_ms(now()), self._event("grant.revoke_requested", req, actor=actor)
        )
        if out.result == "decided":
            raise E.AlreadyDecided(out.status or "decided")

    def _close(self, req: AccessRequest, to: Status, allowed: set[Status], actor: str, **fields: str) -> Outcome:
        out = self.store.close(
            req.id, to, to_ms(now()), allowed, self._event(f"request.{to.value}", req, actor=actor), **fields
        )
        if out.ok:
            self.metrics.request(req.action, to.value)
        return out

    # ---------------------------------------------------------------- timers and grants

    def time_out(self, request_id: str) -> Outcome:
        req = self.store.get(request_id)
        if req is None:
            return Outcome("missing")
        return self._close(req, Status.TIMED_OUT, {Status.PENDING}, "jit")

    def fail_grant(self, req: AccessRequest, error: str, attempts: int | None = None) -> Outcome:
        """approved → failed: the grant kept failing, or the rules no longer allow it."""
        details: dict[str, Any] = {"error": error}
        if attempts is not None:
            details["attempts"] = attempts
        out = self.store.fail(
            req.id,
            error,
            to_ms(now()),
            self._event("request.failed", req, actor="jit", outcome="error", details=details),
        )
        if out.ok:
            self.metrics.request(req.action, "failed")
        return out


def _merge_verified(
    body: RequestBody, verified: dict[str, Any] | None
) -> tuple[dict[str, str], str | None, tuple[str, ...]]:
    """The request's context and requester, and which of them a verified token vouches for.

    On a verified request the token's claims win over what the body says, and a field that
    routes approval (ROUTING_KEYS) must come from the token: the body may not supply one."""
    context = dict(body.context)
    if not verified:
        return context, body.requested_by, ()
    claims = dict(verified.get("context") or {})
    for k in body.context:
        if k in ROUTING_KEYS and k not in claims:
            raise E.BadRequest(
                f"context.{k} routes approval, so on a verified request it must come from the "
                f"token, which has no {k} claim"
            )
    context.update(claims)
    verified_keys = set(claims)
    requested_by = verified.get("requested_by")
    if requested_by:
        verified_keys.add("requested_by")
    else:
        requested_by = body.requested_by
    return context, requested_by, tuple(sorted(verified_keys))


def _same_run(req: AccessRequest, caller: dict[str, str]) -> str | None:
    """The run both the request's token and the caller's name, or None if they differ."""
    for binding in RUN_BINDINGS:
        if all(k in req.verified_keys and req.context.get(k) for k in binding):
            if all(caller.get(k) == req.context[k] for k in binding):
                return "/".join(req.context[k] for k in binding)
            return None
    return None


def _idempotency_key(pipeline: str, idempotency_key: str) -> str:
    return keys.idempotency(pipeline, hashlib.sha256(idempotency_key.encode()).hexdigest())


def _new_id() -> str:
    """Short, unguessable, safe in URLs, Slack text and RQ job ids."""
    return _secrets.token_hex(8)
