"""Policy conditions on a request: auto-approval rules and their caps, per-environment
approvers, and the refusals break-glass can produce.

Which context counts where:
- auto_approve matches the VERIFIED context only (the claims of an OIDC token, see
  bot/request/http/oidc.verified_context). What a pipeline writes in its request body never
  auto-approves it, so a static-token pipeline always goes to humans. Its `oncall` condition
  (the requester is on call) likewise needs a VERIFIED requester: requested_by from the token,
  mapped to a Slack user through `people`; an on-call schedule that cannot be read fails it.
- approvers_by_environment picks approvers from the request's context `environment`, verified
  when the token carries it and otherwise as the body states it: humans still approve, and
  the message shows whether the environment was verified.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

from bot.core import errors as E
from bot.core.identity import encodable, visible, visible_length
from bot.core.policy.approvals import auto_rules
from bot.core.policy.oncall import OnCallAnswer
from bot.core.policy.policy import Policy
from bot.core.policy.schema import Action, AutoApprove, OnCallSchedule

#: Justifications shorter than this are refused: break glass needs a written reason.
MIN_JUSTIFICATION = 10
MAX_JUSTIFICATION = 500


def rule_name(action: str) -> str:
    """How a single auto-approval rule is named in the audit trail and in Slack (in a list of
    rules, each is `…auto_approve[i]`: bot/core/policy/approvals.auto_rules)."""
    return f"actions.{action}.auto_approve"


@dataclass(frozen=True)
class AutoDecision:
    """What the auto-approval rules of an action say about one request (the daily cap aside,
    which the store checks atomically when it approves)."""

    rule: str
    eligible: bool
    why: str | None = None
    matched: dict[str, str] = field(default_factory=dict)
    max_per_day: int = 0
    max_ttl_s: int = 0

    def details(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "matched": self.matched,
            "max_per_day": self.max_per_day,
            "max_ttl_seconds": self.max_ttl_s,
        }


#: Who is on call for a schedule (InFlightRules.on_call), for the `oncall` condition.
OnCallLookup = Callable[[OnCallSchedule], OnCallAnswer]


def auto_decision(
    policy: Policy,
    action: str,
    verified_context: dict[str, str] | None,
    ttl: timedelta,
    *,
    requester: str | None = None,
    requester_verified: bool = False,
    on_call: OnCallLookup | None = None,
) -> AutoDecision | None:
    """None when the action has no auto_approve; otherwise the first of its rules this request
    meets, or, when it meets none, why not (each rule's reason). `requester`: the request's Slack
    user (through `people`); `requester_verified`: its requested_by came from a verified token."""
    a = policy.action(action)
    if a is None or a.auto_approve is None:
        return None
    missed = []
    for path, auto in auto_rules(action, a):  # in order; later rules are not even asked
        decision = _one_rule(path, a, auto, verified_context, ttl, requester, requester_verified, on_call)
        if decision.eligible:
            return decision
        missed.append(decision)
    if len(missed) == 1:
        return missed[0]
    return replace(missed[0], why="; ".join(f"{d.rule}: {d.why}" for d in missed))


def _one_rule(
    path: str,
    a: Action,
    auto: AutoApprove,
    verified_context: dict[str, str] | None,
    ttl: timedelta,
    requester: str | None,
    requester_verified: bool,
    on_call: OnCallLookup | None,
) -> AutoDecision:
    max_ttl = auto.max_ttl or a.ttl.default
    base = {"rule": path, "max_per_day": auto.max_per_day, "max_ttl_s": int(max_ttl.total_seconds())}
    if auto.conditions and verified_context is None:
        return AutoDecision(eligible=False, why="the context is not verified (no OIDC token)", **base)
    matched: dict[str, str] = {}
    for key, patterns in auto.conditions.items():
        value = (verified_context or {}).get(key)
        if value is None:
            return AutoDecision(eligible=False, why=f"the verified context has no {key}", **base)
        if not any(fnmatchcase(value, p) for p in patterns):
            return AutoDecision(eligible=False, why=f"{key} {value!r} is not one of {', '.join(patterns)}", **base)
        matched[key] = value
    if ttl > max_ttl:
        return AutoDecision(
            eligible=False,
            why=f"ttl {int(ttl.total_seconds())}s is over the rule's max_ttl of {base['max_ttl_s']}s",
            matched=matched,
            **base,
        )
    if auto.oncall is not None:
        why = _requester_on_call(auto.oncall, requester, requester_verified, on_call)
        if why:
            return AutoDecision(eligible=False, why=why, matched=matched, **base)
        matched["oncall"] = auto.oncall.key
    return AutoDecision(eligible=True, matched=matched, **base)


def _requester_on_call(
    schedule: OnCallSchedule, requester: str | None, verified: bool, on_call: OnCallLookup | None
) -> str | None:
    """None when the verified requester is on call for `schedule`; otherwise why not."""
    if not verified:
        return "the requester is not verified (requested_by must come from an OIDC token)"
    if requester is None:
        return "the requester is no person the policy's people lists"
    if on_call is None:
        return "no on-call provider is configured"
    answer = on_call(schedule)
    if answer.error:
        return f"{schedule.describe()} could not be read: {answer.error}"
    if requester not in answer.users:
        return f"the requester is not {schedule.describe()}"
    return None


def utc_day(t: datetime) -> str:
    return t.strftime("%Y%m%d")


def check_environment(policy: Policy, action: str, context: dict[str, str]) -> None:
    """Refuse a request whose environment has no approvers (only for per-environment actions)."""
    a = policy.action(action)
    if a is None or not a.approvers_by_environment or a.approvers:
        return
    known = ", ".join(sorted(a.approvers_by_environment))
    env = context.get("environment")
    if not env:
        raise E.BadRequest(f"context.environment is required for {action} (one of: {known})")
    if env not in a.approvers_by_environment:
        raise E.BadRequest(f"context.environment {env[:100]!r} is not one of {known} for {action}")


def check_justification(text: str) -> str:
    """The justification as people will read it: normalised, invisible characters removed, and
    at least MIN_JUSTIFICATION characters a person can see."""
    text = visible(text or "") if encodable(text or "") else ""
    if visible_length(text) < MIN_JUSTIFICATION:
        raise E.BadRequest(
            f"Break glass needs a written justification (at least {MIN_JUSTIFICATION} visible characters)."
        )
    return text[:MAX_JUSTIFICATION]
