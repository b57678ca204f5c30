"""All-of approval rules: one production lead AND one security engineer, each person counting for
one rule only, matched again on every click, atomically, under the stricter of two policies."""

from __future__ import annotations

import json
import threading

import pytest
from approvals_support import ALL_OF, EXEC_GRANT, rules_of_request, with_actions
from support import policy_text

from bot.core import errors as E
from bot.core.clock import now_ms
from bot.core.errors import PolicyError
from bot.core.policy.approvals import ApprovalNotNeeded


@pytest.fixture
def policy_file(tmp_path, state_dir):
    p = tmp_path / "jit-policy.yaml"
    p.write_text(with_actions(str(state_dir), ALL_OF))
    return p


def status(jit, rid):
    return jit.status(rid).get_json()


def test_a_lead_clicking_twice_does_not_satisfy_a_lead_and_a_security_engineer(jit):
    rid = jit.ask("deploy-critical")["id"]
    assert jit.rt.decisions.approve(rid, "U0LEAD1").result == "recorded"
    with pytest.raises(E.AlreadyApproved):
        jit.rt.decisions.approve(rid, "U0LEAD1")
    assert status(jit, rid)["status"] == "pending"
    assert status(jit, rid)["approvals"]["count"] == 1


def test_two_leads_do_not_satisfy_it_and_a_security_engineer_completes_it(jit):
    rid = jit.ask("deploy-critical")["id"]
    assert jit.rt.decisions.approve(rid, "U0LEAD1").result == "recorded"
    with pytest.raises(ApprovalNotNeeded) as refused:
        jit.rt.decisions.approve(rid, "U0LEAD3")  # a lead through the group: Leads is full
    assert "Security 0/1" in refused.value.message
    assert status(jit, rid)["approvals"]["count"] == 1 and status(jit, rid)["status"] == "pending"
    assert jit.rt.decisions.approve(rid, "U0AUDITOR").result == "approved"  # security, via S0SECURITY
    jit.work()
    assert status(jit, rid)["status"] == "active"


def test_the_approval_records_the_rule_that_decided_it(jit):
    rid = jit.ask("deploy-critical")["id"]
    jit.rt.decisions.approve(rid, "U0CISO")
    jit.rt.decisions.approve(rid, "U0LEAD1")
    assert jit.rt.store.fields(rid, "rule")["rule"] == "actions.deploy-critical.approvals[0]"
    rules = rules_of_request(jit.rt, rid)
    assert rules["request.approved"] == "actions.deploy-critical.approvals[0]"
    assert rules["approval.given"] == "actions.deploy-critical.approvals[0]"  # the last click's rule


@pytest.mark.parametrize("second", ["U0LEAD1", "U0CISO"])
def test_a_person_in_both_groups_counts_once_where_the_request_stays_satisfiable(jit, slack, second):
    slack.usergroups["S0PRODLEADS"].append("U0BOTH")
    slack.usergroups["S0SECURITY"].append("U0BOTH")
    rid = jit.ask("deploy-critical")["id"]
    assert jit.rt.decisions.approve(rid, "U0BOTH").result == "recorded"  # alone: never both rules
    assert status(jit, rid)["status"] == "pending"
    # whichever rule the second approver fills, the person in both moves to the other one
    assert jit.rt.decisions.approve(rid, second).result == "approved"


def test_a_person_in_both_groups_does_not_fill_both_rules_with_one_more_of_the_same_rule(jit, slack):
    slack.usergroups["S0PRODLEADS"].append("U0BOTH")
    slack.usergroups["S0SECURITY"].append("U0BOTH")
    rid = jit.ask("deploy-critical")["id"]
    jit.rt.decisions.approve(rid, "U0LEAD1")
    assert jit.rt.decisions.approve(rid, "U0BOTH").result == "approved"  # counted for Security


def test_the_message_shows_each_rules_progress(jit, slack):
    rid = jit.ask("deploy-critical")["id"]
    jit.work()
    jit.rt.decisions.approve(rid, "U0LEAD1")
    jit.work()
    text = json.dumps(slack.message(jit.rt.store.get(rid).message_ts)["blocks"], ensure_ascii=False)
    assert "Leads 1/1 ✓ · Security 0/1" in text


def test_self_approval_rules_apply_per_rule(jit, policy_file, state_dir):
    policy_file.write_text(
        with_actions(
            str(state_dir),
            ALL_OF.replace(
                "{name: Leads, from: [S0PRODLEADS, U0LEAD1], count: 1}",
                "{name: Leads, from: [U0ALICE, U0LEAD1], count: 1, allow_self_approval: true}",
            ).replace("from: [S0SECURITY, U0CISO]", "from: [U0ALICE, U0CISO]"),
        )
    )
    from bot.wiring import load_policy

    jit.rt.set_policy(load_policy(policy_file))
    rid = jit.ask("deploy-critical", requested_by="alice@example.com")["id"]
    # alice asked: she may count for Leads (it allows self-approval), never for Security
    assert jit.rt.decisions.approve(rid, "U0ALICE").result == "recorded"
    with pytest.raises(ApprovalNotNeeded):
        jit.rt.decisions.approve(rid, "U0LEAD1")
    assert jit.rt.decisions.approve(rid, "U0CISO").result == "approved"


def test_two_leads_clicking_at_once_never_both_count(jit):
    for _ in range(8):
        rid = jit.ask("deploy-critical")["id"]
        barrier = threading.Barrier(2)
        results: dict[str, str] = {}

        def click(user: str, rid: str = rid, barrier: threading.Barrier = barrier, results: dict = results) -> None:
            barrier.wait()
            try:
                results[user] = jit.rt.decisions.approve(rid, user).result
            except ApprovalNotNeeded:
                results[user] = "not needed"

        threads = [threading.Thread(target=click, args=(u,)) for u in ("U0LEAD1", "U0LEAD3")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(results.values()) == ["not needed", "recorded"], results
        assert status(jit, rid)["approvals"]["count"] == 1


def test_the_store_refuses_a_matching_made_against_approvals_that_changed(jit):
    rid = jit.ask("deploy-critical")["id"]
    jit.rt.decisions.approve(rid, "U0LEAD1")
    out = jit.rt.store.approve(
        rid,
        "U0LEAD3",
        now_ms(),
        rules=[("a0", 1, ["U0LEAD3"]), ("a1", 1, [])],
        seen=[],  # computed before U0LEAD1's approval
        rule="a0",
        oncall=[],
        given="",
        approved="",
    )
    assert out.result == "stale"
    out = jit.rt.store.approve(
        rid,
        "U0LEAD3",
        now_ms(),
        rules=[("a0", 1, ["U0LEAD1", "U0LEAD3"]), ("a1", 1, [])],  # two in a rule of one
        seen=["U0LEAD1"],
        rule="a0",
        oncall=[],
        given="",
        approved="",
    )
    assert out.result == "invalid"
    assert status(jit, rid)["approvals"]["count"] == 1


def test_adding_a_rule_applies_to_waiting_requests_and_removing_one_does_not(jit, policy_file, state_dir):
    from bot.wiring import load_policy

    def put(text: str) -> None:
        policy_file.write_text(text)
        jit.rt.set_policy(load_policy(policy_file))

    one_rule = ALL_OF.replace("      - {name: Security, from: [S0SECURITY, U0CISO], count: 1}\n", "")
    put(with_actions(str(state_dir), one_rule))
    waiting = jit.ask("deploy-critical")["id"]
    put(with_actions(str(state_dir), ALL_OF))  # tightening: Security added
    assert jit.rt.decisions.approve(waiting, "U0LEAD1").result == "recorded"  # needs Security now
    assert jit.rt.decisions.approve(waiting, "U0CISO").result == "approved"

    created_strict = jit.ask("deploy-critical")["id"]
    put(with_actions(str(state_dir), one_rule) + "# loosened\n")  # Security removed: not for it
    assert jit.rt.decisions.approve(created_strict, "U0LEAD1").result == "recorded"
    assert jit.rt.decisions.approve(created_strict, "U0CISO").result == "approved"


UNNAMED = (
    """  deploy-x:
    description: x
    approvals:
      - {from: [U0LEAD1, U0LEAD2], count: 1}
      - {from: [U0CISO], count: 1}
    ttl: {default: 15m, max: 1h}
"""
    + EXEC_GRANT
)
NAMED = UNNAMED.replace("- {from: [U0LEAD1", "- {name: Leads, from: [U0LEAD1").replace(
    "- {from: [U0CISO]", "- {name: Security, from: [U0CISO]"
)
SECURITY_FIRST = (
    """  deploy-x:
    description: x
    approvals:
      - {name: Security, from: [U0CISO], count: 1}
      - {from: [U0LEAD1, U0LEAD2], count: 1}
    ttl: {default: 15m, max: 1h}
"""
    + EXEC_GRANT
)
LEADS_FIRST = (
    """  deploy-x:
    description: x
    approvals:
      - {from: [U0LEAD1, U0LEAD2], count: 1}
      - {name: Security, from: [U0CISO], count: 1}
    ttl: {default: 15m, max: 1h}
"""
    + EXEC_GRANT
)


@pytest.mark.parametrize(
    ("before", "after"),
    [(UNNAMED, NAMED), (NAMED, UNNAMED), (SECURITY_FIRST, LEADS_FIRST)],
    ids=["naming the rules", "unnaming them", "reordering a named rule around an unnamed one"],
)
def test_naming_or_reordering_rules_leaves_waiting_requests_approvable(jit, policy_file, state_dir, before, after):
    """Found by the attack review: the rules in flight shared paths, the matching merged them, and
    every click on a waiting request was refused as invalid until it timed out."""
    from bot.wiring import load_policy

    def put(text: str) -> None:
        policy_file.write_text(with_actions(str(state_dir), text))
        jit.rt.set_policy(load_policy(policy_file))

    put(before)
    waiting = jit.ask("deploy-x")["id"]
    put(after)
    paths = [r.path for r in jit.rt.rules.in_flight_rules(jit.rt.store.get(waiting))]
    assert len(paths) == len(set(paths)), paths
    assert jit.rt.decisions.approve(waiting, "U0LEAD1").result == "recorded"
    assert jit.rt.decisions.approve(waiting, "U0CISO").result == "approved"
    assert status(jit, waiting)["status"] in ("approved", "active")


# ------------------------------------------------------------------ jit policy check


def parse(text: str):
    from bot.wiring import parse_policy

    return parse_policy(text, source="p.yaml")


def errors_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as e:
        parse(text)
    return e.value.errors


def test_rules_that_can_never_be_met_are_refused_counting_overlaps():
    overlap = ALL_OF.replace("[S0PRODLEADS, U0LEAD1]", "[U0LEAD1]").replace("[S0SECURITY, U0CISO]", "[U0LEAD1]")
    errs = errors_of(with_actions("/tmp", overlap))
    assert any(
        "actions.deploy-critical.approvals: the rules need 2 distinct people (one person counts for one rule only) "
        "but at most 1 can ever approve" in e
        for e in errs
    ), errs
    too_many = ALL_OF.replace("from: [S0SECURITY, U0CISO], count: 1", "from: [U0CISO], count: 2")
    errs = errors_of(with_actions("/tmp", too_many))
    assert any(
        "actions.deploy-critical.approvals.1.count: needs 2 distinct approvers but only 1 can ever approve" in e
        for e in errs
    ), errs
    # user groups cannot be counted offline: not an error here (`jit policy check` warns)
    parse(with_actions("/tmp", ALL_OF.replace("count: 1}", "count: 3}")))


def test_approvals_and_approvers_are_not_mixed():
    text = with_actions("/tmp", ALL_OF.replace("    approvals:\n", "    approvers: [U0LEAD1]\n    approvals:\n"))
    assert any("actions.deploy-critical.approvers: set approvals or approvers, not both" in e for e in errors_of(text))


def test_the_legacy_rule_keeps_working(jit):
    policy_text("/tmp")  # deploy-prod: approvers + approvals_required: 2
    rid = jit.ask("deploy-prod")["id"]
    assert jit.rt.decisions.approve(rid, "U0LEAD1").result == "recorded"
    assert jit.rt.decisions.approve(rid, "U0LEAD3").result == "approved"
    assert jit.rt.store.fields(rid, "rule")["rule"] == "actions.deploy-prod.approvers"


def test_an_approval_inside_a_change_window_records_the_window(jit, policy_file, state_dir):
    from bot.wiring import load_policy

    windowed = ALL_OF.replace(
        "    ttl: {default: 15m", '    windows: ["daily 00:00-24:00 UTC"]\n    ttl: {default: 15m'
    )
    policy_file.write_text(with_actions(str(state_dir), windowed))
    jit.rt.set_policy(load_policy(policy_file))
    rid = jit.ask("deploy-critical")["id"]
    jit.rt.decisions.approve(rid, "U0LEAD1")
    jit.rt.decisions.approve(rid, "U0CISO")
    assert jit.rt.store.fields(rid, "window")["window"] == "actions.deploy-critical.windows[0]"
    jit.rt.audit.flush()
    approved = [e.body for e in jit.rt.audit.entries_for_request(rid) if e.body["event"] == "request.approved"]
    assert approved[0]["details"]["window"] == "actions.deploy-critical.windows[0]"
    assert approved[0]["details"]["rule"] == "actions.deploy-critical.approvals[1]"


def test_the_pipeline_sees_how_many_approvals_all_the_rules_need(jit):
    created = jit.ask("deploy-critical")
    assert created["approvals"] == {"count": 0, "required": 2, "by": []}


def test_a_denial_records_the_rule_that_made_the_denier_an_approver(jit):
    rid = jit.ask("deploy-critical")["id"]
    jit.rt.decisions.deny(rid, "U0CISO", "not this week")
    assert rules_of_request(jit.rt, rid)["request.denied"] == "actions.deploy-critical.approvals[1]"
