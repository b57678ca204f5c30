"""The rules a request in flight follows: the stricter of its creation policy and the current one.

Tightening (an approver or group removed, approvals_required raised, a rule added, an action
removed, self-approval forbidden, a window added) applies to requests already waiting, at once;
loosening applies to new requests only. Group membership comes from the Directory (cached at
most 60 s), who is on call from the OnCallDirectory (cached briefly; unreadable counts nobody).

Approval rules in flight: a request must meet the rules of its creation policy AND those of the
current one. A rule in both (the same name, or the same place when unnamed) is met once, by people
in both versions of it, with the larger count; a rule added by a reload is met by its own people;
a rule a reload removed still holds for the requests created under it. One person counts for one
rule only, and who counts where is recomputed from all approvals on every click
(bot/core/policy/matching.py). Membership of users and groups is read again at each click
(off-boarding bites at once); on-call membership is checked at the click and kept with the
approval (`approved_oncall`): an approval given while on call still counts after the hand-over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from bot.core.model import AccessRequest
from bot.core.policy.approvals import Rule, every_rule, rules_for
from bot.core.policy.matching import Assignment, assign, satisfied, size
from bot.core.policy.oncall import NoOnCall, OnCallAnswer, OnCallDirectory
from bot.core.policy.policy import Policy
from bot.core.policy.schema import Approver, OnCallApprover, OnCallSchedule
from bot.core.ports import Directory


@dataclass(frozen=True)
class InFlightRule:
    """One rule a request in flight must meet: the rule of its creation policy, of the current
    one, or of both (the same key): then only people in both count, and the larger count holds."""

    sides: tuple[Rule, ...]  # the current policy's first

    @property
    def rule(self) -> Rule:
        """The rule as it reads now (the current policy's, else the creation policy's)."""
        return self.sides[0]

    @property
    def path(self) -> str:
        return self.rule.path

    @property
    def name(self) -> str:
        return self.rule.name

    @property
    def count(self) -> int:
        return max(s.count for s in self.sides)

    @property
    def allow_self_approval(self) -> bool:
        return all(s.allow_self_approval for s in self.sides)


@dataclass(frozen=True)
class ApprovalState:
    """A request's approvals (with `clicker`'s last, if given) matched to the rules it must meet."""

    rules: list[InFlightRule]
    #: person → paths of the rules they may count toward
    eligible: dict[str, list[str]]
    assignment: Assignment
    #: People in some rule (membership alone, self-approval aside).
    approvers: frozenset[str]
    #: Approvers who count toward no rule only because they asked for the access themselves.
    self_approvers: frozenset[str]
    #: On-call schedules that could not be read → why (they count nobody: fail closed).
    unavailable: dict[str, str] = field(default_factory=dict)
    #: The on-call schedules (keys) the clicker is on call for now, kept with their approval.
    clicker_oncall: tuple[str, ...] = ()

    @property
    def needs(self) -> list[tuple[str, int]]:
        return [(r.path, r.count) for r in self.rules]

    @property
    def satisfied(self) -> bool:
        return satisfied(self.needs, self.assignment)

    @property
    def counted(self) -> int:
        return size(self.assignment)

    @property
    def required(self) -> int:
        return sum(r.count for r in self.rules)

    def left(self) -> int:
        return max(self.required - self.counted, 0)

    def rule_of(self, person: str) -> InFlightRule | None:
        return next((r for r in self.rules if person in self.assignment.get(r.path, ())), None)

    def counts(self, person: str) -> bool:
        return self.rule_of(person) is not None

    def progress(self) -> list[tuple[InFlightRule, list[str]]]:
        return [(r, list(self.assignment.get(r.path, ()))) for r in self.rules]


def _pair(current: list[Rule], creation: list[Rule]) -> list[InFlightRule]:
    """Each current rule with its creation-policy self, if it has one: the rule with the same key
    (its name, else its place); failing that, the one in the same place (a rule named, unnamed or
    renamed where it stands is the same rule); failing that, one naming the same approvers (an
    unnamed rule that moved). A creation rule left over is met on its own, under a path of its
    own: the matching is keyed by path, and two rules sharing one would merge."""
    left = list(creation)

    def take(match: Callable[[Rule], bool]) -> Rule | None:
        found = next((c for c in left if match(c)), None)
        if found is not None:
            left.remove(found)
        return found

    partner: dict[int, Rule] = {}
    for i, r in enumerate(current):
        if (c := take(lambda c, r=r: c.key == r.key)) is not None:
            partner[i] = c
    now_keys = {r.key for r in current}
    for i, r in enumerate(current):
        if i not in partner and (c := take(lambda c, r=r: c.path == r.path and c.key not in now_keys)) is not None:
            partner[i] = c
    for i, r in enumerate(current):  # an unnamed rule that moved: the same people
        if i not in partner and (c := take(lambda c, r=r: _people(c) == _people(r))) is not None:
            partner[i] = c
    out = [InFlightRule((r, partner[i]) if i in partner else (r,)) for i, r in enumerate(current)]
    taken = {r.path for r in current}
    for c in left:
        path = c.path if c.path not in taken else f"{c.path} (as created)"
        taken.add(path)
        out.append(InFlightRule((replace(c, path=path),)))
    return out


def _people(rule: Rule) -> set[str]:
    return {repr(a) for a in rule.approvers}  # on-call entries are models: compared by their fields


class InFlightRules:
    def __init__(
        self,
        current: Callable[[], Policy],
        versions: Callable[[str], Policy | None] | None,
        directory: Directory,
        oncall: OnCallDirectory | None = None,
    ) -> None:
        self._current = current
        #: A policy version by its sha256 (the rules an in-flight request was created under).
        self._versions = versions
        self.directory = directory
        self.oncall: OnCallDirectory = oncall or NoOnCall()

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

    def member(self, user: str, ids: Iterable[Approver]) -> bool:
        """`user` is one of `ids`: named, in a named group, or on call for a named schedule now."""
        entries = list(ids)
        names = [a for a in entries if isinstance(a, str)]
        if user in names:
            return True
        if any(user in self.directory.members(g) for g in names if g.startswith("S")):
            return True
        return any(user in self.on_call(a.oncall).users for a in entries if isinstance(a, OnCallApprover))

    def on_call(self, schedule: OnCallSchedule) -> OnCallAnswer:
        return self.oncall.on_call(schedule)

    def is_approver(self, action: str, user: str, req: AccessRequest | None = None) -> bool:
        """Without `req`: an approver of `action` (some rule, some environment) under the current
        policy. With it: in some rule that request must meet (bot/core/policy/inflight.py)."""
        if req is None:
            a = self.policy.action(action)
            return a is not None and any(self.member(user, r.approvers) for r in every_rule(action, a))
        return any(all(self.member(user, side.approvers) for side in r.sides) for r in self.in_flight_rules(req))

    def in_flight_rules(self, req: AccessRequest) -> list[InFlightRule]:
        """The rules `req` must meet: those of its creation policy and of the current one, a rule
        in both (same key) once, with the people of both and the larger count."""
        env = req.context.get("environment")
        current = rules_for(self.policy, req.action, env)
        creation_policy = self.policy_of(req)
        if creation_policy.sha256 == self.policy.sha256:
            creation = []
            if req.policy_sha256 and req.policy_sha256 != self.policy.sha256 and len(current) == 1:
                # its version is gone: at least the approvals it was created with
                only = current[0]
                current = [replace(only, count=max(only.count, req.approvals_required))]
        else:
            creation = rules_for(creation_policy, req.action, env)
        return _pair(current, creation)

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
        return any(self.member(user, side.approvers) for r in self.in_flight_rules(req) for side in r.sides)

    # ---------------------------------------------------------------- how many, and when

    def action_exists(self, req: AccessRequest) -> bool:
        return self.policy.action(req.action) is not None

    def approval_state(
        self, req: AccessRequest, approved_oncall: dict[str, list[str]] | None = None, clicker: str | None = None
    ) -> ApprovalState:
        """Match the request's approvals (and `clicker`'s, last) to the rules it must meet.

        `approved_oncall`: for each recorded approval, the on-call schedules (keys) its approver
        was on call for when they clicked. The clicker's on-call membership is read now."""
        recorded = approved_oncall or {}
        people = list(dict.fromkeys([*req.approved_by, *([clicker] if clicker else [])]))
        rules = self.in_flight_rules(req)
        unavailable: dict[str, str] = {}
        clicker_oncall: set[str] = set()

        def on_call_now(person: str, entry: OnCallApprover) -> bool:
            if person != clicker:  # a recorded approval: was its approver on call when they gave it?
                return entry.oncall.key in recorded.get(person, ())
            answer = self.on_call(entry.oncall)
            if answer.error:
                unavailable[entry.oncall.describe()] = answer.error
                return False
            if person in answer.users:
                clicker_oncall.add(entry.oncall.key)
                return True
            return False

        def in_rule(person: str, rule: Rule) -> bool:
            names = rule.ids
            if person in names or any(person in self.directory.members(g) for g in names if g.startswith("S")):
                return True
            # every schedule is asked (not only until one says yes): the approval keeps each one
            # its approver is on call for, and each unreadable one is reported
            hits = [on_call_now(person, a) for a in rule.approvers if isinstance(a, OnCallApprover)]
            return any(hits)

        member = {u: [r.path for r in rules if all([in_rule(u, side) for side in r.sides])] for u in people}
        approvers = frozenset(u for u in people if member[u])
        allowed = {r.path for r in rules if r.allow_self_approval}
        eligible: dict[str, list[str]] = {}
        self_approvers: set[str] = set()
        for u in people:
            paths = member[u]
            if u == req.requester_slack_id:
                paths = [p for p in paths if p in allowed]
                if member[u] and not paths:
                    self_approvers.add(u)
            eligible[u] = paths
        return ApprovalState(
            rules=rules,
            eligible=eligible,
            assignment=assign([(r.path, r.count) for r in rules], eligible, people),
            approvers=approvers,
            self_approvers=frozenset(self_approvers),
            unavailable=unavailable,
            clicker_oncall=tuple(sorted(clicker_oncall)),
        )

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
