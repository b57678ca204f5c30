"""② Approvers decide: approve, deny, break glass — each click checked against the in-flight rules,
each refusal audited (bounded per user), each decision one atomic transition."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from bot.core import errors as E
from bot.core.clock import now, rfc3339, to_ms
from bot.core.identity import encodable
from bot.core.model import AccessRequest, Status
from bot.core.policy.approvals import (
    ApprovalNotNeeded,
    OnCallUnavailable,
    break_glass_path,
    is_all_of,
    rules_for,
    window_path,
)
from bot.core.policy.inflight import ApprovalState, InFlightRules
from bot.core.policy.oncall import unavailable_note
from bot.core.policy.rules import check_justification
from bot.core.ports import Metrics
from bot.request.schemas import MAX_REASON
from bot.store.audit import AuditLog
from bot.store.refusals import record_refusal
from bot.store.requests import Outcome, Store

log = logging.getLogger("jit.decision")

#: A click re-matched this many times because other clicks kept landing first gives up (the
#: clicker is asked to click again); each attempt is one atomic check-and-record.
MATCH_ATTEMPTS = 5


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

    def approve(self, request_id: str, user: str, loaded: AccessRequest | None = None) -> Outcome:
        """`user` approves: their approval is matched, with everyone's, to the request's rules
        (bot/core/policy/inflight.py) and recorded only if it counts somewhere. The store
        re-checks the matching atomically; when another click landed in between, match again.
        `loaded`: the request as the caller just read it, matched first (the store's check makes
        a stale one cost a second match, never a wrong approval)."""
        for _ in range(MATCH_ATTEMPTS):
            if loaded is None or loaded.id != request_id:
                loaded = self.load(request_id)
            out = self._approve_once(self._pending_for_approval(loaded, user), user)
            loaded = None
            if out is not None:
                return out
        self.refused(self.load(request_id), user, "approval", "too many approvals at once")
        raise E.JitError("Many approvals arrived at once and yours was not recorded; please click again.")

    def _pending_for_approval(self, req: AccessRequest, user: str) -> AccessRequest:
        if req.status != Status.PENDING:
            raise self.refuse_decided(req, user, "approval", req.status.value)
        if req.fields.get("break_glass"):
            self.refused(req, user, "approval", "a break-glass request: needs a break-glass approver")
            raise E.BreakGlassOnly(
                "This request asked for break glass: only a break-glass approver can approve it, "
                "with the *Break glass* button and a written justification."
            )
        if not self.rules.action_exists(req):
            self.refused(req, user, "approval", "the action was removed from the policy")
            raise E.NotAnApprover(f"*{req.action}* is no longer in the policy; this request cannot be approved.")
        if user in req.approved_by:
            self.refused(req, user, "approval", "already approved by this user")
            raise E.AlreadyApproved()
        return req

    def state(self, req: AccessRequest, clicker: str | None = None) -> ApprovalState:
        """The request's approvals matched to its rules (with `clicker`'s last, if given)."""
        raw = req.fields.get("approved_oncall")
        return self.rules.approval_state(req, json.loads(raw) if raw else {}, clicker=clicker)

    def _approve_once(self, req: AccessRequest, user: str) -> Outcome | None:
        """One attempt; None when the approvals changed under it (match again)."""
        state = self.state(req, clicker=user)
        if user not in state.approvers:
            if state.unavailable:
                notes = "; ".join(unavailable_note(k, v) for k, v in state.unavailable.items())
                self.refused(req, user, "approval", "on-call schedule unreadable", unavailable=state.unavailable)
                raise OnCallUnavailable(
                    f"jit cannot tell whether you are on call, so your approval does not count: {notes}."
                )
            self.refused(req, user, "approval", "not an approver")
            raise E.NotAnApprover(f"You are not an approver for *{req.action}*, so your approval does not count.")
        if not state.counts(user):
            if user in state.self_approvers:
                self.refused(req, user, "approval", "self-approval")
                raise E.SelfApproval()
            self.refused(req, user, "approval", "not needed: the rules it counts toward are full")
            raise ApprovalNotNeeded(
                "Your approval is not needed: every rule you count toward already has its approvals. "
                f"Still waiting for: {missing(state)}."
            )
        t = now()
        window = self._window_or_refuse(req, user, t) if state.satisfied else None
        rule = state.rule_of(user)
        assert rule is not None  # state.counts(user)
        oncall = list(state.clicker_oncall)
        out = self.store.approve(
            req.id,
            user,
            to_ms(t),
            rules=[(r.path, r.count, state.assignment[r.path]) for r in state.rules],
            seen=req.approved_by,
            rule=rule.path,
            oncall=oncall,
            window=window,
            given=self._event(
                "approval.given", req, actor=user, details={"rule": rule.path, **({"oncall": oncall} if oncall else {})}
            ),
            approved=self._event(
                "request.approved",
                req,
                actor=user,
                details={"rule": rule.path, **({"window": window} if window else {}), "counted": state.assignment},
            ),
        )
        if out.result == "stale":
            return None
        if out.result == "duplicate":
            self.refused(req, user, "approval", "already approved by this user")
            raise E.AlreadyApproved()
        if out.result == "missing":
            raise E.NotFound("That request no longer exists.")
        if out.result == "decided":
            raise self.refuse_decided(req, user, "approval", out.status or "decided")
        if out.result == "invalid":  # the matching broke a rule: a bug, and nothing was recorded
            log.error("approval of %s by %s: the store refused the matching", req.id, user)
            raise E.JitError("Your approval could not be recorded; please click again.")
        if out.result == "approved":
            self.metrics.request(req.action, "approved")
            self.metrics.approval_wait(req.action, (now() - req.created_at).total_seconds())
        return out

    def _window_or_refuse(self, req: AccessRequest, user: str, t: datetime) -> str | None:
        """The approval that completes a request must come while a change window is open;
        returns the window that is (None when the action has none)."""
        open_, _ = self.rules.windows_until(req, t, break_glass=False)
        if not open_:
            self.refused(req, user, "approval", "outside the change window")
            nxt = self.rules.next_opening(req, t)
            when = f" It opens again at {rfc3339(nxt)}." if nxt else ""
            raise E.WindowClosed(
                f"*{req.action}* may only be granted during its change windows, and none is open now.{when}"
            )
        index = self.rules.policy.windows_for(req.action).open_index(t)
        return window_path(req.action, index) if index is not None else None

    def approvals_left(self, req: AccessRequest, counted: int = 0) -> int:
        """Approvals the request still misses."""
        return self.state(req).left()

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
        rule = break_glass_path(self.rules.policy, req.action)
        event = self._event(
            "request.approved",
            req,
            actor=user,
            details={
                "rule": rule,
                "break_glass": True,
                "follow_up_review": True,
                "justification": justification,
                "requested_ttl_seconds": int(req.ttl.total_seconds()),
                "break_glass_requested": bool(extra.get("break_glass")),
                "outside_window": bool(extra.get("outside_window")),
                "security_channel": bg.security_channel if bg else None,
            },
        )
        out = self.store.break_glass(req.id, user, max_ttl, justification, to_ms(now()), event, rule=rule)
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
            self._event("request.denied", req, actor=user, details={"reason": reason, **self._rule_of(req, user)}),
            decided_by=user,
            deny_reason=reason,
        )
        if not out.ok:
            raise self.refuse_decided(req, user, "denial", out.status or "decided")
        self.metrics.request(req.action, "denied")
        return out

    def _rule_of(self, req: AccessRequest, user: str) -> dict[str, str]:
        """The rule that makes `user` an approver of `req` (for a denial's audit entry)."""
        env = req.context.get("environment")
        rule = next(
            (r for r in rules_for(self.rules.policy, req.action, env) if self.rules.member(user, r.approvers)), None
        )
        return {"rule": rule.path} if rule else {}

    # ---------------------------------------------------------------- on call

    def oncall_to_page(self, req: AccessRequest) -> list[str]:
        """Who is on call, for the schedules of `req`'s rules marked `dm: true`, and has not been
        told of it yet: each is marked as told here (once per request and person; a worker then
        sends the DM through the due queue). Unreadable schedules page nobody."""
        if req.status != Status.PENDING:
            return []
        out: list[str] = []
        for rule in rules_for(self.rules.policy, req.action, req.context.get("environment")):
            for schedule in rule.oncall:
                if not schedule.dm:
                    continue
                answer = self.rules.on_call(schedule)
                for user in sorted(answer.users):
                    if user != req.requester_slack_id and user not in out and self.store.mark_paged(req.id, user):
                        out.append(user)
        return out

    # ---------------------------------------------------------------- what the message shows

    def message_facts(self, req: AccessRequest) -> dict[str, Any]:
        """What the request's Slack message shows beyond the request itself (its policy's
        description and approvers, break-glass state, the auto-approval rule, whether
        self-approval can be ruled out)."""
        policy = self.rules.policy_of(req)
        action = policy.action(req.action)
        extra = self.store.fields_of(
            req,
            "break_glass",
            "break_glass_by",
            "break_glass_justification",
            "auto_rule",
            "cut_by_window",
            "extensions",
        )
        if self.rules.self_approval_allowed(req):
            self_approval = "allowed"
        elif req.requester_slack_id:
            self_approval = "enforced"
        else:
            self_approval = "unknown_requester"
        rules = None
        if is_all_of(self.rules.policy, req.action) and self.rules.action_exists(req):
            rules = [
                {
                    "name": rule.name,
                    "count": rule.count,
                    "counted": people,
                    "approvers": [str(a) for a in rule.rule.approvers],
                }
                for rule, people in self.state(req).progress()
            ]
        return {
            "description": action.description if action else "",
            "approvers": [str(a) for a in policy.approvers_for(req.action, req.context.get("environment"))] or None,
            "rules": rules,
            "oncall_notes": self._oncall_notes(req) if req.status == Status.PENDING else [],
            "break_glass": policy.break_glass_for(req.action) is not None,
            "break_glass_requested": bool(extra.get("break_glass")),
            "break_glass_by": extra.get("break_glass_by"),
            "justification": extra.get("break_glass_justification"),
            "auto_rule": extra.get("auto_rule"),
            "self_approval": self_approval,
            "cut_by_window": bool(extra.get("cut_by_window")),
            "extendable": req.status == Status.ACTIVE and self._extendable(req),
            "extensions": int(extra.get("extensions") or 0),
            "extension": self.extension_round(req) if req.status == Status.ACTIVE else None,
        }

    def _extendable(self, req: AccessRequest) -> bool:
        action = self.rules.policy.action(req.action)
        return action is not None and action.extend is not None

    def extension_round(self, req: AccessRequest) -> dict[str, Any] | None:
        """The extension waiting for approval on `req` (bot/grant/extend.py opens it), if any:
        {id, add_ms, add_s, by, reason, required, approvers}."""
        f = self.store.fields(req.id, "ext_round", "ext_add_ms", "ext_by", "ext_reason", "ext_required")
        if not f.get("ext_round"):
            return None
        return {
            "id": f["ext_round"],
            "add_ms": int(f.get("ext_add_ms") or 0),
            "add_s": int(f.get("ext_add_ms") or 0) // 1000,
            "by": f.get("ext_by", ""),
            "reason": f.get("ext_reason", ""),
            "required": int(f.get("ext_required") or 1),
            "approvers": self.store.extension_approvers(req.id),
        }

    def _oncall_notes(self, req: AccessRequest) -> list[str]:
        """For each on-call schedule of the request's rules that cannot be read now, why."""
        notes: dict[str, None] = {}
        for rule in rules_for(self.rules.policy, req.action, req.context.get("environment")):
            for schedule in rule.oncall:
                answer = self.rules.on_call(schedule)
                if answer.error:
                    notes[unavailable_note(schedule.describe(), answer.error)] = None
        return list(notes)


def missing(state: ApprovalState) -> str:
    """The rules still short of approvals, as a message says them: "Security 0/1"."""
    short = [f"{rule.name} {len(people)}/{rule.count}" for rule, people in state.progress() if len(people) < rule.count]
    return ", ".join(short) or "nothing"
