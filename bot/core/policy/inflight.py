"""The rules a request in flight follows: the stricter of its creation policy and the current one.

Tightening (an approver or group removed, approvals_required raised, an action removed,
self-approval forbidden, a window added) applies to requests already waiting, at once; loosening
applies to new requests only. Group membership comes from the Directory (cached at most 60 s).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from bot.core.model import AccessRequest
from bot.core.policy.policy import Policy
from bot.core.ports import Directory


class InFlightRules:
    def __init__(
        self,
        current: Callable[[], Policy],
        versions: Callable[[str], Policy | None] | None,
        directory: Directory,
    ) -> None:
        self._current = current
        #: A policy version by its sha256 (the rules an in-flight request was created under).
        self._versions = versions
        self.directory = directory

    @property
    def policy(self) -> Policy:
        return self._current()

    def policy_of(self, req: AccessRequest) -> Policy:
        """The policy `req` was created under; the current one if that version is gone."""
        current = self.policy
        if not req.policy_sha256 or req.policy_sha256 == current.sha256 or self._versions is None:
            return current
        return self._versions(req.policy_sha256) or current

    def both(self, req: AccessRequest) -> tuple[Policy, Policy]:
        """(creation policy, current policy)."""
        return self.policy_of(req), self.policy

    # ---------------------------------------------------------------- who

    def member(self, user: str, ids: list[str]) -> bool:
        if user in ids:
            return True
        return any(user in self.directory.members(g) for g in ids if g.startswith("S"))

    def is_approver(self, action: str, user: str, req: AccessRequest | None = None) -> bool:
        """Without `req`: an approver of `action` in any environment, under the current policy.
        With it: an approver of that request under both its creation policy and the current one."""
        if req is None:
            return self.member(user, self.policy.all_approvers(action))
        env = req.context.get("environment")
        return all(self.member(user, p.approvers_for(req.action, env)) for p in self.both(req))

    def is_break_glass_approver(self, req: AccessRequest, user: str) -> bool:
        groups = [p.break_glass_for(req.action) for p in self.both(req)]
        return all(bg is not None and self.member(user, bg.approvers) for bg in groups)

    def has_break_glass(self, req: AccessRequest) -> bool:
        return all(p.break_glass_for(req.action) is not None for p in self.both(req))

    def break_glass_max_ttl(self, req: AccessRequest) -> timedelta:
        return min(bg.max_ttl for p in self.both(req) if (bg := p.break_glass_for(req.action)))

    def is_auditor(self, user: str) -> bool:
        return self.member(user, list(self.policy.model.auditors))

    def may_view(self, req: AccessRequest, user: str) -> bool:
        """`/jit status <id>`: its approvers, auditors and its requester (or everyone, by policy)."""
        if self.policy.model.defaults.status_visibility == "everyone":
            return True
        if user == req.requester_slack_id or self.is_auditor(user):
            return True
        env = req.context.get("environment")
        return any(self.member(user, p.approvers_for(req.action, env)) for p in self.both(req))

    # ---------------------------------------------------------------- how many, and when

    def action_exists(self, req: AccessRequest) -> bool:
        return self.policy.action(req.action) is not None

    def approvals_required(self, req: AccessRequest) -> int:
        needed = [req.approvals_required]
        needed += [a.approvals_required for p in self.both(req) if (a := p.action(req.action))]
        return max(needed)

    def self_approval_allowed(self, req: AccessRequest) -> bool:
        return all((a := p.action(req.action)) is not None and a.allow_self_approval for p in self.both(req))

    def windows_until(self, req: AccessRequest, at: datetime, *, break_glass: bool) -> tuple[bool, datetime | None]:
        """Whether the action's change windows (creation and current policy) are open at `at`,
        and when they close (None: no windows). Break glass is not bound by windows."""
        if break_glass:
            return True, None
        until = None
        for p in self.both(req):
            windows = p.windows_for(req.action)
            if not windows:
                continue
            if not windows.is_open(at):
                return False, None
            end = windows.open_until(at)
            until = end if until is None or (end is not None and end < until) else until
        return True, until

    def next_opening(self, req: AccessRequest, at: datetime) -> datetime | None:
        windows = self.policy.windows_for(req.action)
        return windows.next_opening(at) if windows else None
