"""What a policy does with one request, worked out without Redis, Slack or providers: the decision
path `jit policy explain` prints and `jit policy test` checks against a case's expectations.

It follows the hook's order (bot/request/service.py): the action, the pipeline, the ttl, break
glass, the change windows, the environment, an unknown requester, then auto-approval, and
finally who may approve. Who is on call comes from the case (`oncall`), never from a provider.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bot.core import errors as E
from bot.core.clock import human, now, parse_duration, rfc3339
from bot.core.policy.approvals import Rule, rules_for, window_path
from bot.core.policy.oncall import OnCallAnswer
from bot.core.policy.policy import Policy
from bot.core.policy.rules import auto_decision, check_environment
from bot.core.policy.schema import OnCallSchedule


@dataclass(frozen=True)
class Ask:
    """One request as a case or `jit policy explain` describes it."""

    pipeline: str
    action: str
    at: datetime
    ttl: str | int | None = None
    context: dict[str, str] = field(default_factory=dict)
    #: Claims an OIDC token would vouch for (its context), and its `requested_by` if any.
    verified: dict[str, str] | None = None
    requested_by: str | None = None
    break_glass: bool = False
    #: Who is on call: schedule (PagerDuty id or Opsgenie name) → Slack users, each at a level
    #: (a list: all at level 1).
    oncall: Mapping[str, Mapping[str, int]] = field(default_factory=dict)


@dataclass
class Outcome:
    """What happens to the request, in the terms of a case's `expect`, and the path to it in words."""

    allowed: bool = True
    error: str | None = None
    why: str | None = None
    auto_approved: bool = False
    rule: str | None = None
    window: str = "none"  # open | closed | none (the action has no windows)
    break_glass: bool = False
    approvers: dict[str, list[str]] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)
    self_approval: str = "forbidden"
    steps: list[str] = field(default_factory=list)

    def facts(self) -> dict[str, Any]:
        """The outcome as a case's `expect` names it."""
        return {
            "allowed": self.allowed,
            "error": self.error,
            "why": self.why,
            "auto_approved": self.auto_approved,
            "rule": self.rule,
            "window": self.window,
            "break_glass": self.break_glass,
            "approvers": self.approvers,
            "count": self.count,
            "self_approval": self.self_approval,
        }

    def refuse(self, error: str, why: str) -> Outcome:
        self.allowed, self.error, self.why = False, error, why
        self.steps.append(f"Refused ({error}): {why}")
        return self


def evaluate(policy: Policy, ask: Ask) -> Outcome:
    out = Outcome()
    say = out.steps.append
    action = policy.action(ask.action)
    if action is None:
        return out.refuse("unknown_action", f"the policy has no action {ask.action!r}")
    say(f"Action {ask.action!r}" + (f": {action.description}" if action.description else "") + ".")
    allowed = policy.pipelines.get(ask.pipeline)
    if allowed is None:
        return out.refuse("action_not_allowed", f"the policy has no pipeline {ask.pipeline!r}")
    if ask.action not in allowed.actions:
        return out.refuse("action_not_allowed", f"pipeline {ask.pipeline!r} may not request {ask.action!r}")
    say(f"Pipeline {ask.pipeline!r} may request it ({'OIDC' if allowed.oidc else 'static token'}).")
    try:
        ttl = action.ttl.default if ask.ttl is None else parse_duration(ask.ttl)
    except ValueError as e:
        return out.refuse("bad_request", f"ttl: {e}")
    if ttl > action.ttl.max:
        return out.refuse("bad_request", f"ttl {human(ttl)} is longer than the action's max of {human(action.ttl.max)}")
    say(f"TTL {human(ttl)} (default {human(action.ttl.default)}, max {human(action.ttl.max)}).")

    bg = policy.break_glass_for(ask.action)
    out.break_glass = bg is not None
    if ask.break_glass and bg is None:
        return out.refuse("no_break_glass", f"{ask.action} has no break-glass approvers")

    windows = policy.windows_for(ask.action)
    if windows:
        index = windows.open_index(ask.at)
        if index is not None:
            out.window = "open"
            say(f"Window {window_path(ask.action, index)} ({windows.specs[index]!r}) is open at {rfc3339(ask.at)}.")
        else:
            out.window = "closed"
            nxt = windows.next_opening(ask.at)
            closed = f"no change window is open at {rfc3339(ask.at)}" + (
                f" (next opening {rfc3339(nxt)})" if nxt else ""
            )
            if not ask.break_glass:
                return out.refuse("outside_window", closed)
            say(f"{closed[0].upper()}{closed[1:]}, but break glass may be asked outside windows.")
    else:
        say("The action has no change windows.")

    context = dict(ask.context)
    claims = dict(ask.verified or {})
    verified_by = claims.pop("requested_by", None)
    context.update(claims)
    requested_by = verified_by or ask.requested_by
    try:
        check_environment(policy, ask.action, context)
    except E.JitError as e:
        return out.refuse(e.code, e.message)
    requester = policy.slack_user_for(requested_by)
    if requester is None and not action.allow_self_approval and policy.unknown_requester_for(ask.action) == "refuse":
        return out.refuse("requester_unknown", "the requester is no person the policy's people lists")
    who = f"{requested_by!r} ({requester or 'no known person'}" + (", verified)" if verified_by else ")")
    say(f"Requested by {who}." if requested_by else "No requester named.")

    if ask.break_glass and bg is not None:
        say(
            f"Break glass: only one of {', '.join(bg.approvers)} may approve, alone, with a written "
            f"justification (TTL cut to {human(bg.max_ttl)}; {bg.security_channel} is alerted)."
        )
        out.approvers, out.count = {"break_glass": list(bg.approvers)}, {"break_glass": 1}
        return out

    decision = auto_decision(
        policy,
        ask.action,
        claims if ask.verified is not None else None,
        ttl,
        requester=requester,
        requester_verified=verified_by is not None,
        on_call=lambda s: _simulated(ask.oncall, s),
    )
    if decision is not None and decision.eligible:
        out.auto_approved, out.rule = True, decision.rule
        say(f"Auto-approved by {decision.rule} (matched {decision.matched}; at most {decision.max_per_day} a day).")
        return out
    if decision is not None:
        say(f"Not auto-approved: {decision.why}.")

    rules = rules_for(policy, ask.action, context.get("environment"))
    say("Every rule must be met, one person counting for one rule only:" if len(rules) > 1 else "Approval:")
    for rule in rules:
        out.approvers[rule.name] = [str(a) for a in rule.approvers]
        out.count[rule.name] = rule.count
        say(f"  {_describe(rule)}")
    out.self_approval = "allowed" if any(r.allow_self_approval for r in rules) else "forbidden"
    if bg is not None:
        say(f"Break glass is possible: {', '.join(bg.approvers)} may approve alone, with a justification.")
    return out


def _describe(rule: Rule) -> str:
    self_note = "" if rule.allow_self_approval else " (not the requester)"
    return f"{rule.name} ({rule.path}): {rule.count} of {', '.join(str(a) for a in rule.approvers)}{self_note}"


def _simulated(oncall: Mapping[str, Mapping[str, int]], schedule: OnCallSchedule) -> OnCallAnswer:
    people = oncall.get(schedule.schedule, {})
    return OnCallAnswer(frozenset(u for u, level in people.items() if level <= schedule.max_level))


def at_time(value: str | None, default: datetime | None = None) -> datetime:
    """An RFC 3339 time (`2025-01-06T10:00:00Z`), or `default` (now)."""
    if not value:
        return default or now()
    t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if t.tzinfo is None:
        raise ValueError(f"{value!r} needs a time zone (e.g. Z or +01:00)")
    return t
