"""Who counts toward which rule: the maximum assignment never counts a person twice, respects every
rule's count and who may count where, and declares a request satisfied exactly when some valid
assignment fills every rule (checked against brute force)."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from bot.core.policy.matching import assign, rule_of, satisfied, size

PEOPLE = [f"U{i}" for i in range(6)]


@st.composite
def problems(draw):
    n_rules = draw(st.integers(1, 4))
    needs = [(f"r{i}", draw(st.integers(1, 3))) for i in range(n_rules)]
    people = draw(st.lists(st.sampled_from(PEOPLE), unique=True, max_size=6))
    eligible = {p: draw(st.sets(st.sampled_from([k for k, _ in needs]))) for p in people}
    order = draw(st.permutations(people))
    return needs, eligible, list(order)


def best_possible(needs, eligible, people) -> int:
    """The largest valid assignment, by trying every choice of rule (or none) for every person."""
    best = 0
    options = [[None, *sorted(eligible[p])] for p in people]
    cap = dict(needs)
    for choice in itertools.product(*options):
        used: dict[str, int] = {}
        for rule in choice:
            if rule is not None:
                used[rule] = used.get(rule, 0) + 1
        if all(n <= cap[r] for r, n in used.items()):
            best = max(best, sum(used.values()))
    return best


@settings(max_examples=300, deadline=None)
@given(problems())
def test_the_assignment_is_valid_and_maximum(problem):
    needs, eligible, order = problem
    out = assign(needs, eligible, order)
    counted = [p for people in out.values() for p in people]
    assert len(counted) == len(set(counted)), "a person counted twice"
    for rule, people in out.items():
        assert len(people) <= dict(needs)[rule]
        assert all(rule in eligible[p] for p in people), "counted toward a rule they are not in"
    assert size(out) == best_possible(needs, eligible, order)
    total = sum(n for _, n in needs)
    assert satisfied(needs, out) == (best_possible(needs, eligible, order) == total)


def test_a_person_in_both_rules_moves_to_the_one_that_keeps_the_request_satisfiable():
    needs = [("leads", 1), ("security", 1)]
    both = {"U0BOTH": {"leads", "security"}, "U0LEAD": {"leads"}}
    out = assign(needs, both, ["U0BOTH", "U0LEAD"])  # the person in both clicked first
    assert rule_of(out, "U0BOTH") == "security" and rule_of(out, "U0LEAD") == "leads"
    assert satisfied(needs, out)


def test_two_leads_do_not_satisfy_a_lead_and_a_security_engineer():
    needs = [("leads", 1), ("security", 1)]
    out = assign(needs, {"U0LEAD1": {"leads"}, "U0LEAD2": {"leads"}}, ["U0LEAD1", "U0LEAD2"])
    assert size(out) == 1 and not satisfied(needs, out)
