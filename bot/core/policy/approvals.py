"""An action's approval rules, and the names decisions record for the rule that decided them.

`approvers` + `approvals_required` is one rule; `approvals: [{from, count}, …]` is several, all of
which must be met, one person counting for one rule only (bot/core/policy/matching.py). A rule is
named by its place in the policy file: `actions.deploy-prod.approvals[1]`,
`actions.deploy-prod.approvers`, `actions.deploy-prod.approvers_by_environment.prod`; the
auto-approval rules and change windows likewise (`actions.deploy-prod.auto_approve[0]`,
`actions.deploy-prod.windows[2]`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bot.core import errors as E
from bot.core.policy.matching import assign, size
from bot.core.policy.policy import Policy
from bot.core.policy.schema import Action, Approver, AutoApprove, OnCall, OnCallApprover


@dataclass(frozen=True)
class Rule:
    """One approval rule: `count` distinct people from `approvers`."""

    path: str
    name: str
    count: int
    approvers: tuple[Approver, ...]
    allow_self_approval: bool
    #: What identifies the rule across policy versions: its `name` when the policy gives one (so
    #: reordering named rules changes nothing), else its path.
    key: str = ""

    @property
    def ids(self) -> list[str]:
        """The Slack users (U…, W…) and user groups (S…) it names."""
        return [a for a in self.approvers if isinstance(a, str)]

    @property
    def oncall(self) -> list[OnCall]:
        return [a.oncall for a in self.approvers if isinstance(a, OnCallApprover)]

    def label(self) -> str:
        return f"{self.name} ({self.path})"


def action_path(action: str) -> str:
    return f"actions.{action}"


def rules_of(action_name: str, action: Action, environment: str | None = None) -> list[Rule]:
    """The rules a request for `action` in `environment` must meet (all of them)."""
    base = action_path(action_name)
    if action.approvals:
        return [
            Rule(
                path=f"{base}.approvals[{i}]",
                key=f"name:{rule.name}" if rule.name else f"{base}.approvals[{i}]",
                name=rule.name or f"Rule {i + 1}",
                count=rule.count,
                approvers=tuple(rule.from_),
                allow_self_approval=(
                    action.allow_self_approval if rule.allow_self_approval is None else rule.allow_self_approval
                ),
            )
            for i, rule in enumerate(action.approvals)
        ]
    if environment is not None and environment in action.approvers_by_environment:
        path, approvers = f"{base}.approvers_by_environment.{environment}", action.approvers_by_environment[environment]
    else:
        path, approvers = f"{base}.approvers", action.approvers
    return [
        Rule(
            path=path,
            key=path,
            name="Approvers",
            count=action.approvals_required,
            approvers=tuple(approvers),
            allow_self_approval=action.allow_self_approval,
        )
    ]


def rules_for(policy: Policy, action: str, environment: str | None = None) -> list[Rule]:
    a = policy.action(action)
    return [] if a is None else rules_of(action, a, environment)


def every_rule(action_name: str, action: Action) -> list[Rule]:
    """The rules of every environment (for `jit policy check` and explain)."""
    if action.approvals or not action.approvers_by_environment:
        return rules_of(action_name, action)
    out = rules_of(action_name, action) if action.approvers else []
    return out + [rules_of(action_name, action, env)[0] for env in action.approvers_by_environment]


def is_all_of(policy: Policy, action: str) -> bool:
    """The action names several rules (`approvals:`), so the message shows each one's progress."""
    a = policy.action(action)
    return bool(a and a.approvals)


def auto_rules(action_name: str, action: Action) -> list[tuple[str, AutoApprove]]:
    """(path, rule) for each auto-approval rule: `…auto_approve` for one, `…auto_approve[i]` in a list."""
    auto = action.auto_approve
    base = f"{action_path(action_name)}.auto_approve"
    if auto is None:
        return []
    if isinstance(auto, AutoApprove):
        return [(base, auto)]
    return [(f"{base}[{i}]", rule) for i, rule in enumerate(auto)]


def window_path(action: str, index: int) -> str:
    return f"{action_path(action)}.windows[{index}]"


def break_glass_path(policy: Policy, action: str) -> str:
    a = policy.action(action)
    return f"{action_path(action)}.break_glass" if a is not None and a.break_glass else "break_glass"


class ApprovalNotNeeded(E.JitError):
    """Every rule you count toward already has its approvals."""

    code = "approval_not_needed"
    http_status = 409


class OnCallUnavailable(E.JitError):
    """The on-call schedule that would make you an approver cannot be read now (jit fails closed)."""

    code = "oncall_unavailable"
    http_status = 503


# ---------------------------------------------------------------- can the rules ever be met?


@dataclass(frozen=True)
class Reach:
    """How many of the people a set of rules needs could ever count (one rule each)."""

    needed: int
    reachable: int
    #: Entries counted as "enough people of their own" because their members are unknown here.
    unresolved: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.reachable >= self.needed


def reach(
    rules: list[Rule], members: Callable[[str], set[str] | None] | None = None, *, count_oncall: bool = True
) -> Reach:
    """Could every rule be met at once, one person counting for one rule only?

    A user counts as one person; a user group as its members when `members(group)` knows them
    (None: unknown), otherwise — like an on-call schedule — as enough people of its own, found
    in no other entry (`count_oncall=False`: schedules count nobody). So an error here is
    certain; with unresolved entries it is only possible."""
    needed = sum(r.count for r in rules)
    eligible: dict[str, set[str]] = {}
    unresolved: dict[str, None] = {}
    for r in rules:
        for entry in r.approvers:
            if isinstance(entry, str) and entry[0] in "UW":
                people = [entry]
            elif isinstance(entry, str):
                known = members(entry) if members else None
                if known is None:
                    unresolved[entry] = None
                    people = [f"{entry}#{i}" for i in range(needed)]
                else:
                    people = sorted(known)
            else:
                unresolved[str(entry)] = None
                people = [f"{entry.oncall.key}#{i}" for i in range(needed)] if count_oncall else []
            for person in people:
                eligible.setdefault(person, set()).add(r.path)
    assignment = assign([(r.path, r.count) for r in rules], eligible, sorted(eligible))
    return Reach(needed=needed, reachable=size(assignment), unresolved=tuple(unresolved))


def rule_findings(
    action_name: str, action: Action, members: Callable[[str], set[str] | None] | None = None
) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(errors, warnings), each (where, what), about whether `action`'s rules can be met, for
    `jit policy check`.

    With `members` (user groups read from Slack) a group counts as its members: rules that can
    never be met are errors. Groups it cannot read and on-call schedules cannot be counted here:
    when the rules need them, that is a warning."""
    errors: list[tuple[str, str]] = []
    warnings: list[tuple[str, str]] = []
    for env_rules in _rule_sets(action_name, action):
        where = env_rules[0].path.rsplit("[", 1)[0] if len(env_rules) > 1 else env_rules[0].path
        found = reach(env_rules, members)
        if not found.ok:
            errors.append(
                (
                    where,
                    f"needs {found.needed} distinct people (one person counts for one rule only) "
                    f"but at most {found.reachable} can ever approve",
                )
            )
            continue
        without = reach(env_rules, lambda g: (members(g) if members else None) or set(), count_oncall=False)
        if not without.ok and found.unresolved:
            warnings.append(
                (
                    where,
                    f"needs {found.needed} distinct people, and only {', '.join(found.unresolved)} can make up "
                    f"the {found.needed - without.reachable} the named users cannot; they can only be counted "
                    "when resolvable (user groups: with SLACK_BOT_TOKEN; on-call schedules: at the click)",
                )
            )
    return errors, warnings


def _rule_sets(action_name: str, action: Action) -> list[list[Rule]]:
    """The rule sets a request may face: one, or one per environment."""
    if action.approvals or not action.approvers_by_environment:
        return [rules_of(action_name, action)]
    sets = [rules_of(action_name, action)] if action.approvers else []
    return sets + [rules_of(action_name, action, env) for env in action.approvers_by_environment]
