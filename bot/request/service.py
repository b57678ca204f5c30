"""① A pipeline asks: a request is created (or auto-approved), and only its own run may follow it up."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bot.core import errors as E
from bot.core.clock import from_ms, now_ms, parse_duration, to_ms
from bot.core.crypto import RequestTokens, Vault, token_hash
from bot.core.gates import BINDING, binding_mismatch, run_key
from bot.core.identity import encodable
from bot.core.model import AccessRequest, Status
from bot.core.policy.approvals import rules_for
from bot.core.policy.inflight import InFlightRules
from bot.core.policy.policy import Policy
from bot.core.policy.rules import auto_decision, check_environment, utc_day
from bot.core.ports import Metrics
from bot.request.schemas import RequestBody
from bot.store import keys
from bot.store.audit import AuditLog
from bot.store.gates import GateStore
from bot.store.refusals import record_refusal
from bot.store.requests import Store

#: Context keys that route a request's approval (approvers_by_environment): on a verified
#: request they must come from the token, never from the body.
ROUTING_KEYS = ("environment",)
#: The verified claims that name one CI run (GitLab pipeline; GitHub run and attempt). A
#: follow-up carrying an OIDC token must name the same run as the request's own token did.
RUN_BINDINGS = (("repository", "pipeline_id"), ("repository", "run_id", "run_attempt"))


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


class RequestService:
    def __init__(
        self,
        store: Store,
        audit: AuditLog,
        rules: InFlightRules,
        tokens: RequestTokens,
        vault: Vault,
        metrics: Metrics,
    ) -> None:
        self.store = store
        self.audit = audit
        self.rules = rules
        self.tokens = tokens
        self.vault = vault  # opens the sealed tokens of requests made before tokens were derived
        self.metrics = metrics
        self.gates = GateStore(store.r, store.retention_s)

    def create(
        self,
        pipeline: str,
        body: RequestBody,
        idempotency_key: str | None = None,
        verified: dict[str, Any] | None = None,
        *,
        gate: str | None = None,
    ) -> Created:
        """A pipeline asks for access. `verified` holds what an OIDC token vouches for; `gate` names
        the deployment a platform holds for this request (bot/request/gates), whose decision it hears."""
        policy = self.rules.policy
        action = policy.action(body.action)
        if action is None:
            raise E.UnknownAction(f"unknown action {body.action!r}")
        allowed = policy.pipelines.get(pipeline)
        if allowed is None or body.action not in allowed.actions:
            raise E.ActionNotAllowed(f"pipeline {pipeline!r} may not request {body.action!r}")
        if allowed.gate is not None and gate is None:
            # a gated pipeline's jobs do not ask: their deployment was asked for and approved already
            return self._bound(pipeline, body.action, allowed.gate[0], verified)
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
        held = self._held(pipeline, body, verified)
        if held is not None:
            return held

        t = from_ms(now_ms())  # millisecond precision: the 201 and every later read agree
        break_glass = policy.break_glass_for(body.action)
        if body.break_glass and break_glass is None:
            raise E.NoBreakGlass(f"{body.action} has no break-glass approvers; ask without break_glass")
        fingerprint = body.fingerprint(pipeline, verified)
        windows = policy.windows_for(body.action)
        outside = bool(windows) and not windows.is_open(t)
        if outside and not body.break_glass:
            earlier = self._earlier(pipeline, idempotency_key, fingerprint)
            if earlier is not None:
                return earlier
            raise E.OutsideWindow(body.action, windows.next_opening(t), windows.specs)
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
        rid = _new_id()
        token = self.tokens.token(rid)
        rules = rules_for(policy, body.action, context.get("environment"))
        req = AccessRequest(
            id=rid,
            action=body.action,
            pipeline=pipeline,
            reason=body.reason,
            ttl=ttl,
            status=Status.PENDING,
            created_at=t,
            pending_until=t + policy.pending_timeout_for(body.action),
            approvals_required=sum(r.count for r in rules),
            channel=policy.channel_for(body.action),
            requested_by=requested_by,
            requester_slack_id=requester,
            context=context,
            verified=bool(verified),
            verified_keys=verified_keys,
            policy_sha256=policy.sha256,
            request_token_hash=token_hash(token),
        )
        idem = None
        if idempotency_key:
            idem = (_idempotency_key(pipeline, idempotency_key), fingerprint)
        extra = {"break_glass": "requested"} if body.break_glass else {}
        if outside:
            extra["outside_window"] = "1"
        if gate is not None:
            extra["gate"] = gate
        event = self.audit.event_body(
            "request.created",
            request_id=req.id,
            action=req.action,
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
        # Unless an on-call schedule of its rules is paged by DM (a worker asks the schedule),
        # a new request owes nothing but its reminder and its first post: no job of its own.
        pages = any(schedule.dm for rule in rules for schedule in rule.oncall)
        remind_ms = None if pages else to_ms(req.reminder_at)
        created, value = self.store.create(req, idem, to_ms(t), event, extra, remind_ms=remind_ms)
        if not created:
            return self._existing(value, fingerprint, pipeline)
        self.metrics.request(req.action, "created")
        if not body.break_glass:
            req = self._try_auto_approve(policy, req, verified, t) or req
        return Created(req, token, True)

    def _held(self, pipeline: str, body: RequestBody, verified: dict[str, Any] | None) -> Created | None:
        """The active grant of this action the same pipeline already holds — for an OIDC caller, one
        its own run asked for — handed back rather than a second credential (200, same id)."""
        caller = dict((verified or {}).get("context") or {})
        t = from_ms(now_ms())
        for req in self.store.active_for(pipeline, body.action):
            if req.expires_at is None or req.expires_at <= t or req.verified != bool(verified):
                continue
            if verified and _same_run(req, caller) is None:
                continue
            self.audit.append(
                "request.reused",
                request_id=req.id,
                action=req.action,
                actor=f"pipeline:{pipeline}",
                details={
                    "why": "the pipeline holds an active grant of this action; it gets that grant back",
                    "reason": body.reason,
                    "asked_ttl": body.ttl,
                },
            )
            return Created(req, self._token_of(req), False)
        return None

    def _bound(self, pipeline: str, action: str, platform: str, verified: dict[str, Any] | None) -> Created:
        """The request approved for the very run whose job holds this OIDC token: its repository
        (project), run and attempt (pipeline and job), environment and commit must all match; the
        job then collects that request's credential with no second approval. Anything else: 403."""
        claims = dict((verified or {}).get("context") or {})
        run = {k: claims.get(k) for k in BINDING[platform]}
        key = run_key(platform, claims)
        found = self.gates.for_run(key) if key is not None else None
        req = self.store.get(found.request_id) if found is not None and found.request_id else None
        if key is None:
            why = f"pipeline {pipeline!r} is gated: only the job of an approved deployment may ask, with its OIDC token"
        elif found is None or req is None or found.pipeline != pipeline:
            why = f"no deployment of this run was approved for pipeline {pipeline!r}"
        elif (mismatch := binding_mismatch(platform, req.context, claims)) is not None:
            why = f"this run's deployment was not approved: {mismatch}"
        elif req.action != action:
            why = f"this run's deployment was approved for {req.action!r}, not {action!r}"
        elif req.status not in (Status.APPROVED, Status.ACTIVE):
            why = f"this run's deployment request is {req.status.value}"
        else:
            self.audit.append(
                "gate.bound",
                request_id=req.id,
                action=req.action,
                actor=f"pipeline:{pipeline}",
                details={"platform": platform, "run": run},
            )
            return Created(req, self._token_of(req), False)
        record_refusal(
            self.store.r,
            self.audit,
            "gate.bound.refused",
            actor=f"pipeline:{pipeline}",
            request_id=req.id if req is not None else None,
            action=action,
            details={"platform": platform, "run": run, "why": why},
        )
        raise E.Forbidden(why)

    def _existing(self, value: str, fingerprint: str, pipeline: str) -> Created:
        """The request an Idempotency-Key already made; a different body or caller is an error (422).
        Handing its request_token out again is audited (`request.replayed`): with a static pipeline
        token the key is as good as the request_token, so every use of it is on the record."""
        rid, _, rest = value.partition("|")
        seen, _, sealed = rest.partition("|")  # keys of older versions carried the sealed token here
        if seen and seen != fingerprint:
            raise E.IdempotencyKeyReused("this Idempotency-Key was already used for a different request; use a new key")
        existing = self.store.get(rid)
        if existing is None:  # expired between the two reads; treat the key as fresh
            raise E.NotFound("the request for this Idempotency-Key is gone; retry without it")
        self.audit.append(
            "request.replayed",
            request_id=existing.id,
            action=existing.action,
            actor=f"pipeline:{pipeline}",
            details={"via": "idempotency_key", "status": existing.status.value},
        )
        return Created(existing, self._token_of(existing, sealed), False)

    def _token_of(self, req: AccessRequest, sealed: str = "") -> str:
        """The request_token to hand back for `req`: made again from its id with the key that made
        it (its hash is the one stored); nothing of the token itself is stored."""
        token = self.tokens.recover(req.id, req.request_token_hash)
        if token is not None:
            return token
        # A request made by an earlier version (still in Redis after an upgrade) has a random
        # token, kept sealed: in its Idempotency-Key's value (`sealed`), in its own key
        # `jit:req:<id>:token`, or, earliest, in the request hash. Nothing new is written there.
        sealed = sealed or self.store.request_token_blob(req.id)
        if not sealed:
            raise ValueError("the request token cannot be made again with the configured keys")
        return self.vault.open(sealed)

    def created_for(self, pipeline: str, idempotency_key: str) -> str | None:
        """The id of the request this pipeline's Idempotency-Key made (kept 24 h), if any."""
        value = self.store.r.get(_idempotency_key(pipeline, idempotency_key))
        return value.partition("|")[0] if value else None

    def _earlier(self, pipeline: str, idempotency_key: str | None, fingerprint: str) -> Created | None:
        """The request an Idempotency-Key already made (a retry after its window closed)."""
        if not idempotency_key:
            return None
        value = self.store.r.get(_idempotency_key(pipeline, idempotency_key))
        return self._existing(value, fingerprint, pipeline) if value else None

    def _try_auto_approve(
        self, policy: Policy, req: AccessRequest, verified: dict[str, Any] | None, t: datetime
    ) -> AccessRequest | None:
        """Approve at once when the action's auto_approve rule holds on the verified context."""
        verified_context = dict(verified.get("context") or {}) if verified else None
        decision = auto_decision(
            policy,
            req.action,
            verified_context,
            req.ttl,
            requester=req.requester_slack_id,
            requester_verified="requested_by" in req.verified_keys,
            on_call=self.rules.on_call,
        )
        if decision is None:
            return None
        why = decision.why
        if decision.eligible:
            counter = keys.auto_approvals(req.pipeline, req.action, utc_day(t))
            event = self.audit.event_body(
                "request.approved",
                request_id=req.id,
                action=req.action,
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
        if req.request_token_hash and secrets.compare_digest(token_hash(bearer), req.request_token_hash):
            return FollowUp(req, "request_token")
        if verified is not None and pipeline == req.pipeline and req.verified:
            caller = dict(verified.get("context") or {})
            run = _same_run(req, caller)
            gated = self.gates.of_request(req.id) if run is not None else None
            # a gated request is its deployment's job's alone: other jobs of the run are strangers
            if run is not None and (gated is None or binding_mismatch(gated.platform, req.context, caller) is None):
                return FollowUp(req, f"oidc:{run}")
        raise E.NotFound()


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
    return secrets.token_hex(8)
