"""Policy conditions on a request: auto-approval rules and their caps, per-environment
approvers, and the refusals break-glass can produce.

Which context counts where:
- auto_approve matches the VERIFIED context only (the claims of an OIDC token, see
  bot/request/http/oidc.verified_context). What a pipeline writes in its request body never
  auto-approves it, so a static-token pipeline always goes to humans.
- approvers_by_environment picks approvers from the request's context `environment`, verified
  when the token carries it and otherwise as the body states it: humans still approve, and
  the message shows whether the environment was verified.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

from bot.core import errors as E
from bot.core.identity import encodable, visible, visible_length
from bot.core.policy.policy import Policy

#: Justifications shorter than this are refused: break glass needs a written reason.
MIN_JUSTIFICATION = 10
MAX_JUSTIFICATION = 500


def rule_name(action: str) -> str:
    """How an auto-approval rule is named in the audit trail and in Slack."""
    return f"actions.{action}.auto_approve"


@dataclass(frozen=True)
class AutoDecision:
    """What the auto-approval rule of an action says about one request (the daily cap aside,
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


def auto_decision(
    policy: Policy, action: str, verified_context: dict[str, str] | None, ttl: timedelta
) -> AutoDecision | None:
    """None when the action has no auto_approve; otherwise whether this request qualifies."""
    a = policy.action(action)
    if a is None or a.auto_approve is None:
        return None
    auto = a.auto_approve
    max_ttl = auto.max_ttl or a.ttl.default
    base = {
        "rule": rule_name(action),
        "max_per_day": auto.max_per_day,
        "max_ttl_s": int(max_ttl.total_seconds()),
    }
    if verified_context is None:
        return AutoDecision(eligible=False, why="the context is not verified (no OIDC token)", **base)
    matched: dict[str, str] = {}
    for key, patterns in auto.conditions.items():
        value = verified_context.get(key)
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
    return AutoDecision(eligible=True, matched=matched, **base)


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
