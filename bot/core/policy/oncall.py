"""On-call schedules as approvers: the port the provider adapters implement, and what they answer.

Whoever a schedule puts on call is resolved to Slack users by the adapter (bot/decision/slack/
oncall.py: PagerDuty or Opsgenie, then `users.lookupByEmail`). An answer that carries an
`error` counts nobody: when a provider cannot be read, nobody gains approval rights from the
outage (fail closed), and the error says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from bot.core.policy.schema import OnCallSchedule


@dataclass(frozen=True)
class OnCallAnswer:
    """Who is on call for one schedule now, as Slack user ids; `error`: nobody, and why."""

    users: frozenset[str] = frozenset()
    error: str | None = None


class OnCallDirectory(Protocol):
    """Who is on call for a schedule (cached briefly by the adapter)."""

    def on_call(self, schedule: OnCallSchedule) -> OnCallAnswer: ...


class NoOnCall:
    """No provider wired in (CLI tools, tests of other things): every schedule fails closed."""

    def on_call(self, schedule: OnCallSchedule) -> OnCallAnswer:
        return OnCallAnswer(error="no on-call provider is configured")


def unavailable_note(describe: str, error: str) -> str:
    """How the message and a refused click say that a schedule could not be read."""
    return f"{describe}: {error} — nobody counts as on call until it answers"
