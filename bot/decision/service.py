"""② Approvers decide: approve, deny, break glass — each click checked against the in-flight rules,
each refusal audited (bounded per user), each decision one atomic transition."""

from __future__ import annotations

from typing import Any

from bot.core import errors as E
from bot.core.clock import now, rfc3339, to_ms
from bot.core.identity import encodable
from bot.core.model import AccessRequest, Status
from bot.core.policy.inflight import InFlightRules
from bot.core.policy.rules import check_justification
from bot.core.ports import Metrics
from bot.request.schemas import MAX_REASON
from bot.store.audit import AuditLog
from bot.store.refusals import record_refusal
from bot.store.requests import Outcome, Store


class DecisionService:
    def __init__(self, store: Store, audit: AuditLog, rules: InFlightRules, metrics: Metrics) -> None:
        self.store = store
        self.audit = audit
        self.rules = rules
        self.metrics = metrics

    def _event(self, event: str, req: AccessRequest, **kw: Any) -> str:
        return self.audit.event_body(event, request_id=req.id, action=req.action, **kw)

    # ---------------------------------------------------------------- refusals

    def require_approver(self, req: AccessRequest, user: str, verb: str) -> None:
        """`user` may act on `req` as an approver (or, but for approvals, a break-glass approver)."""
        allowed = self.rules.is_approver(req.action, user, req) or (
            verb != "approval" and self.rules.is_break_glass_approver(req, user)
        )
        if not allowed:
            self.refused(req, user, verb, "not an approver")
            raise E.NotAnApprover(f"You are not an approver for *{req.action}*, so your {verb} does not count.")

    def refused(self, req: AccessRequest, user: str, verb: str, why: str, **details: Any) -> None:
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

    def refuse_decided(self, req: AccessRequest, user: str, verb: str, status: str) -> E.AlreadyDecided:
        """A click on a request that is no longer open: audited, then refused."""
        self.refused(req, user, verb, f"already {status}")
        return E.AlreadyDecided(status)

    def load(self, request_id: str) -> AccessRequest:
        req = self.store.get(request_id)
        if req is None:
            raise E.NotFound("That request no longer exists.")
        return req

    # ---------------------------------------------------------------- approve

    def approve(self, request_id: str, user: str) -> Outcome:
        req = self.load(request_id)
        if req.status != Status.PENDING:
            raise self.refuse_decided(req, user, "approval", req.status.value)
        if self.store.fields(req.id, "break_glass"):
            self.refused(req, user, "approval", "a break-glass request: needs a break-glass approver")
            raise E.BreakGlassOnly(
                "This request asked for break glass: only a break-glass approver can approve it, "
                "with the *Break glass* button and a written justification."
            )
        if not self.rules.action_exists(req):
            self.refused(req, user, "approval", "the action was removed from the policy")
            raise E.NotAnApprover(f"*{req.action}* is no longer in the policy; this request cannot be approved.")
        self.require_approver(req, user, "approval")
        if not self.rules.self_approval_allowed(req) and req.requester_slack_id == user:
            self.refused(req, user, "approval", "self-approval")
            raise E.SelfApproval()
        required = self.rules.approvals_required(req)
        discounted = [u for u in req.approved_by if u != user and not self.rules.is_approver(req.action, u, req)]
        counted = len(req.approvals) - len(discounted)
        t = now()
        if counted + 1 >= required:
            open_, _ = self.rules.windows_until(req, t, break_glass=False)
            if not open_:
                self.refused(req, user, "approval", "outside the change window")
                nxt = self.rules.next_opening(req, t)
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
            self.refused(req, user, "approval", "already approved by this user")
            raise E.AlreadyApproved()
        if out.result == "missing":
            raise E.NotFound("That request no longer exists.")
        if out.result == "decided":
            raise self.refuse_decided(req, user, "approval", out.status or "decided")
        if out.result == "approved":
            self.metrics.request(req.action, "approved")
            self.metrics.approval_wait(req.action, (now() - req.created_at).total_seconds())
        return out

    def approvals_left(self, req: AccessRequest, counted: int) -> int:
        return max(self.rules.approvals_required(req) - counted, 0)

    # ---------------------------------------------------------------- break glass

    def check_can_break_glass(self, request_id: str, user: str) -> AccessRequest:
        """May `user` break glass on this request? (Before the justification modal opens.)"""
        req = self.load(request_id)
        if req.status != Status.PENDING:
            raise self.refuse_decided(req, user, "break_glass", req.status.value)
        if not self.rules.has_break_glass(req):
            raise E.NoBreakGlass(f"*{req.action}* has no break-glass approvers.")
        if not self.rules.is_break_glass_approver(req, user):
            self.refused(req, user, "break_glass", "not a break-glass approver", break_glass=True)
            raise E.NotBreakGlassApprover(
                f"You are not a break-glass approver for *{req.action}*, so you cannot break glass."
            )
        if not self.rules.self_approval_allowed(req) and req.requester_slack_id == user:
            self.refused(req, user, "break_glass", "self-approval", break_glass=True)
            raise E.SelfApproval()
        return req

    def break_glass(self, request_id: str, user: str, justification: str) -> Outcome:
        """One break-glass approver approves alone: the TTL is cut to break_glass.max_ttl, the
        security channel is alerted (a due-queue item, retried until delivered) and the audit
        entry is marked for follow-up review."""
        req = self.check_can_break_glass(request_id, user)
        justification = check_justification(justification)
        max_ttl = int(self.rules.break_glass_max_ttl(req).total_seconds())
        extra = self.store.fields(req.id, "break_glass", "outside_window")
        bg = self.rules.policy.break_glass_for(req.action)
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
            raise self.refuse_decided(req, user, "break_glass", out.status or "decided")
        self.metrics.request(req.action, "approved")
        return out

    # ---------------------------------------------------------------- deny

    def check_can_deny(self, request_id: str, user: str) -> AccessRequest:
        req = self.load(request_id)
        if req.status != Status.PENDING:
            raise self.refuse_decided(req, user, "denial", req.status.value)
        self.require_approver(req, user, "denial")
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
            raise self.refuse_decided(req, user, "denial", out.status or "decided")
        self.metrics.request(req.action, "denied")
        return out

    # ---------------------------------------------------------------- what the message shows

    def message_facts(self, req: AccessRequest) -> dict[str, Any]:
        """What the request's Slack message shows beyond the request itself (its policy's
        description and approvers, break-glass state, the auto-approval rule, whether
        self-approval can be ruled out)."""
        policy = self.rules.policy_of(req)
        action = policy.action(req.action)
        extra = self.store.fields(
            req.id, "break_glass", "break_glass_by", "break_glass_justification", "auto_rule", "cut_by_window"
        )
        if self.rules.self_approval_allowed(req):
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
