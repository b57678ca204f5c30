"""What changed between two policies: actions, pipelines and approvers added or removed."""

from __future__ import annotations

from typing import Any

from bot.core.policy.policy import Policy


def _approver_labels(policy: Policy, action: str) -> set[str]:
    a = policy.action(action)
    if a is None:
        return set()
    out = {str(p) for p in a.approvers}
    for env, people in a.approvers_by_environment.items():
        out |= {f"{env}:{p}" for p in people}
    for i, rule in enumerate(a.approvals):
        out |= {f"{rule.name or f'approvals[{i}]'}:{p}" for p in rule.from_}
    bg = policy.break_glass_for(action)
    if bg is not None:
        out |= {f"break-glass:{p}" for p in bg.approvers}
    return out


def policy_diff(old: Policy | None, new: Policy) -> dict[str, Any]:
    """Actions, pipelines and approvers added/removed, and which actions changed otherwise.

    Approvers are labelled `U…` (default), `<env>:U…` (approvers_by_environment), `<rule>:U…`
    (an `approvals` rule, by name or place) and `break-glass:U…`; an on-call entry reads
    "on call for PagerDuty schedule P… (level 1)".
    """
    if old is None:
        return {"first_load": True, "actions": sorted(new.actions), "pipelines": sorted(new.pipelines)}
    old_a, new_a = set(old.actions), set(new.actions)
    approvers: dict[str, dict[str, list[str]]] = {}
    changed: dict[str, list[str]] = {}
    for name in sorted(old_a | new_a):
        before, after = _approver_labels(old, name), _approver_labels(new, name)
        if before != after:
            entry = {}
            if after - before:
                entry["added"] = sorted(after - before)
            if before - after:
                entry["removed"] = sorted(before - after)
            approvers[name] = entry
        if name in old_a and name in new_a:
            o = old.actions[name].model_dump()
            n = new.actions[name].model_dump()
            fields = sorted(
                k
                for k in set(o) | set(n)
                if k not in ("approvers", "approvers_by_environment", "approvals") and o.get(k) != n.get(k)
            )
            if old.break_glass_for(name) != new.break_glass_for(name):
                fields = sorted(set(fields) | {"break_glass"})
            if fields:
                changed[name] = fields
    out: dict[str, Any] = {
        "actions_added": sorted(new_a - old_a),
        "actions_removed": sorted(old_a - new_a),
        "pipelines_added": sorted(set(new.pipelines) - set(old.pipelines)),
        "pipelines_removed": sorted(set(old.pipelines) - set(new.pipelines)),
        "approvers": approvers,
        "changed": changed,
    }
    if old.model.auditors != new.model.auditors:
        out["auditors"] = {
            "added": sorted(set(new.model.auditors) - set(old.model.auditors)),
            "removed": sorted(set(old.model.auditors) - set(new.model.auditors)),
        }
    return out
