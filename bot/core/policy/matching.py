"""Which approval counts toward which rule: a maximum assignment of people to rules, pure.

Every rule needs `count` distinct people; one person counts for one rule only. Who counts where
is not fixed when they click: the assignment is recomputed from everyone's approvals on every
click (a maximum bipartite b-matching, Kuhn's augmenting paths), so a person who belongs to two
rules ends up in the one that keeps the request satisfiable. The request is satisfied exactly
when a valid assignment fills every rule — which is the case if and only if the maximum
assignment does.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

#: rule key → the people counted toward it.
Assignment = dict[str, list[str]]


def assign(
    needs: Sequence[tuple[str, int]], eligible: Mapping[str, Collection[str]], order: Sequence[str]
) -> Assignment:
    """A maximum assignment of the people in `order` to the rules in `needs` ((key, count) pairs).

    `eligible[person]` names the rules that person may count toward. People earlier in `order`
    are placed first, and later ones move them only along an augmenting path (never out of the
    assignment), so among maximum assignments this one keeps earlier approvals counted. Rules are
    tried in the order given."""
    cap = dict(needs)
    rule_order = [k for k, _ in needs]
    out: Assignment = {k: [] for k in rule_order}

    def rules_of(person: str) -> list[str]:
        mine = set(eligible.get(person, ()))
        return [k for k in rule_order if k in mine and cap[k] > 0]

    def augment(person: str, seen: set[str], leaving: str | None = None) -> bool:
        """Find `person` a place (other than `leaving`), moving others along an augmenting path."""
        for rule in rules_of(person):
            if rule == leaving or rule in seen:
                continue
            seen.add(rule)
            if len(out[rule]) < cap[rule]:
                out[rule].append(person)
                return True
            for i, other in enumerate(out[rule]):
                if augment(other, seen, leaving=rule):
                    out[rule][i] = person
                    return True
        return False

    for person in dict.fromkeys(order):  # each person once, in order
        augment(person, set())
    return out


def size(assignment: Assignment) -> int:
    return sum(len(people) for people in assignment.values())


def satisfied(needs: Sequence[tuple[str, int]], assignment: Assignment) -> bool:
    """Every rule has its count."""
    return all(len(assignment.get(k, ())) >= n for k, n in needs)


def rule_of(assignment: Assignment, person: str) -> str | None:
    return next((k for k, people in assignment.items() if person in people), None)
