"""A loaded, validated policy and the questions the rest of jit asks it."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cached_property
from typing import Any

from bot.core.identity import normalize
from bot.core.policy.schema import Action, BreakGlass, Pipeline, PolicyModel, gate_key
from bot.core.policy.windows import Windows


@dataclass(frozen=True)
class Policy:
    """A loaded, validated policy. Immutable; a reload builds a new one."""

    model: PolicyModel
    grants: dict[str, tuple[str, Any]]  # action name → (grant type, validated backend config)
    sha256: str
    source: str
    windows: dict[str, Windows] = field(default_factory=dict)
    text: str = ""

    @property
    def actions(self) -> dict[str, Action]:
        return self.model.actions

    @property
    def pipelines(self) -> dict[str, Pipeline]:
        return self.model.pipelines

    def action(self, name: str) -> Action | None:
        return self.model.actions.get(name)

    def channel_for(self, action: str) -> str:
        a = self.model.actions[action]
        return a.channel or self.model.defaults.channel  # validated: one of them is set

    def pending_timeout_for(self, action: str) -> timedelta:
        return self.model.actions[action].pending_timeout or self.model.defaults.pending_timeout

    def pipeline_for_token(self, token: str) -> str | None:
        """The pipeline whose token_sha256 matches, compared in constant time against all."""
        digest = hashlib.sha256(token.encode()).hexdigest()
        found = None
        for name, p in self.model.pipelines.items():
            if p.token_sha256 is not None and hmac.compare_digest(digest, p.token_sha256):
                found = name
        return found

    def gated_pipeline(self, platform: str, place: str, environment: str) -> str | None:
        """The pipeline whose `github:` (`gitlab:`) gate names this repository (project path) and
        environment, or None: such a deployment is not jit's to approve."""
        return self._gates.get(gate_key(platform, place, environment))

    @cached_property
    def _gates(self) -> dict[tuple[str, str, str], str]:
        return {p.gate_key: name for name, p in self.model.pipelines.items() if p.gate_key is not None}

    def slack_user_for(self, requested_by: str | None) -> str | None:
        """The Slack user `requested_by` names, through `people` only: text shaped like a Slack id
        names nobody (a pipeline must not be able to make an approver "the requester")."""
        if not requested_by:
            return None
        return self.people.get(normalize(requested_by))

    @cached_property
    def people(self) -> dict[str, str]:
        """`people` keyed by normalised identity (bot/core/identity.py)."""
        return {normalize(k): v for k, v in self.model.people.items()}

    def unknown_requester_for(self, action: str) -> str:
        a = self.model.actions.get(action)
        return (a.unknown_requester if a and a.unknown_requester else None) or self.model.defaults.unknown_requester

    def audit_channel(self) -> str | None:
        return self.model.audit.channel or self.model.defaults.channel

    def approvers_for(self, action: str, environment: str | None = None) -> list[str]:
        """Who approves `action` for a request in `environment` (its own list, else the default)."""
        a = self.model.actions.get(action)
        if a is None:
            return []
        if environment is not None and environment in a.approvers_by_environment:
            return list(a.approvers_by_environment[environment])
        return list(a.approvers)

    def all_approvers(self, action: str) -> list[str]:
        """Everyone who approves `action` in some environment."""
        a = self.model.actions.get(action)
        if a is None:
            return []
        out = list(a.approvers)
        for people in a.approvers_by_environment.values():
            out += [p for p in people if p not in out]
        return out

    def break_glass_for(self, action: str) -> BreakGlass | None:
        a = self.model.actions.get(action)
        if a is None or a.break_glass is False:
            return None
        return a.break_glass or self.model.break_glass

    def windows_for(self, action: str) -> Windows:
        return self.windows.get(action) or Windows(())
