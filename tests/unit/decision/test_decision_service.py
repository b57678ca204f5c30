"""bot/decision/service.py: DecisionService.approve / deny / break_glass as plain calls.

The rules of a decision: N distinct approvers, never the requester, group membership from the
directory, the stricter of the creation and current policy for requests in flight, the change
window at the last approval, break glass alone with a justification — and every refusal in the
audit trail."""

from __future__ import annotations

from datetime import timedelta

import pytest
from freezegun import freeze_time
from unit_support import ask

from bot.core import errors as E
from bot.core.model import Status


def events(rt, rid: str) -> list[tuple[str, str | None, str]]:
    return [(e.body["event"], e.body["actor"], e.body["outcome"]) for e in rt.audit.entries_for_request(rid)]


def refusals(rt, rid: str) -> list[str]:
    return [e.body["details"]["why"] for e in rt.audit.entries_for_request(rid) if e.body["outcome"] == "refused"]


# ------------------------------------------------------------------ approve


def test_two_distinct_approvers_approve_and_the_same_one_twice_counts_once(rt):
    rid = ask(rt)  # deploy-prod: 2 approvals
    first = rt.decisions.approve(rid, "U0LEAD1")
    assert (first.result, first.count) == ("recorded", 1)
    assert rt.decisions.approvals_left(rt.store.get(rid), first.count) == 1
    with pytest.raises(E.AlreadyApproved):
        rt.decisions.approve(rid, "U0LEAD1")
    assert rt.store.get(rid).status == Status.PENDING
    second = rt.decisions.approve(rid, "U0LEAD2")
    assert (second.result, second.count) == ("approved", 2)
    req = rt.store.get(rid)
    assert req.status == Status.APPROVED and req.decided_by == "U0LEAD2"
    assert req.approved_by == ["U0LEAD1", "U0LEAD2"]
    assert events(rt, rid) == [
        ("request.created", "pipeline:web-ci", "ok"),
        ("approval.given", "U0LEAD1", "ok"),
        ("approval.refused", "U0LEAD1", "refused"),
        ("approval.given", "U0LEAD2", "ok"),
        ("request.approved", "U0LEAD2", "ok"),
    ]
    assert refusals(rt, rid) == ["already approved by this user"]


def test_the_requester_cannot_approve_their_own_request(rt):
    rid = ask(rt, requested_by="alice@example.com")  # U0ALICE is also an approver of deploy-prod
    with pytest.raises(E.SelfApproval):
        rt.decisions.approve(rid, "U0ALICE")
    assert rt.store.get(rid).approvals == []
    assert refusals(rt, rid) == ["self-approval"]


def test_self_approval_where_the_action_allows_it(rt, repolicy):
    repolicy(
        rt,
        ("    approvers: [U0LEAD1, U0ALICE]\n", "    approvers: [U0LEAD1, U0ALICE]\n    allow_self_approval: true\n"),
    )
    rid = ask(rt, "read-secret", requested_by="alice")
    assert rt.decisions.approve(rid, "U0ALICE").result == "approved"


def test_only_approvers_count_and_a_group_counts_its_members(rt):
    rid = ask(rt)
    with pytest.raises(E.NotAnApprover):
        rt.decisions.approve(rid, "U0STRANGER")
    assert refusals(rt, rid) == ["not an approver"]
    assert rt.decisions.approve(rid, "U0LEAD3").result == "recorded"  # in S0PRODLEADS
    assert rt.decisions.approve(rid, "U0LEAD4").result == "approved"  # ... and so is U0LEAD4


def test_a_decided_request_takes_no_more_approvals(rt):
    rid = ask(rt)
    rt.decisions.deny(rid, "U0LEAD1", "not today")
    with pytest.raises(E.AlreadyDecided) as refused:
        rt.decisions.approve(rid, "U0LEAD2")
    assert refused.value.status == "denied"
    assert rt.store.get(rid).approvals == []
    assert refusals(rt, rid) == ["already denied"]


def test_an_approval_at_the_pending_timeout_never_counts_even_before_the_timeout_job_ran(rt):
    with freeze_time("2026-12-02 10:00:00"):
        rid = ask(rt, "read-secret")  # 30 min pending timeout
    with freeze_time("2026-12-02 10:30:00"):
        assert rt.store.get(rid).status == Status.PENDING, "the timeout job has not run yet"
        with pytest.raises(E.AlreadyDecided) as refused:
            rt.decisions.approve(rid, "U0LEAD1")
    assert refused.value.status == "timed_out"
    assert rt.store.get(rid).approvals == []
    assert refusals(rt, rid) == ["already timed_out"]


def test_a_denial_at_the_pending_timeout_is_too_late_even_before_the_timeout_job_ran(rt):
    """The timeout wins for every decision alike: a request whose time is up ends `timed_out`,
    whichever click or job comes first."""
    with freeze_time("2026-12-02 10:00:00"):
        rid = ask(rt, "read-secret")  # 30 min pending timeout
    with freeze_time("2026-12-02 10:30:00"):
        with pytest.raises(E.AlreadyDecided) as refused:
            rt.decisions.deny(rid, "U0LEAD1", "not now")
    assert refused.value.status == "timed_out"
    assert rt.store.get(rid).status == Status.PENDING, "left for the timeout job, which is due"
    assert rt.store.get(rid).deny_reason is None


def test_an_unknown_request_is_not_found(rt):
    with pytest.raises(E.NotFound):
        rt.decisions.approve("0000000000000000", "U0LEAD1")


# ------------------------------------------------------------------ requests in flight: the stricter policy


def test_a_raised_threshold_binds_requests_already_waiting(rt, repolicy):
    rid = ask(rt)
    rt.decisions.approve(rid, "U0LEAD1")
    repolicy(rt, ("    approvals_required: 2\n", "    approvals_required: 3\n"))
    assert rt.decisions.approve(rid, "U0LEAD2").result == "recorded"
    assert rt.decisions.approve(rid, "U0LEAD3").result == "approved"


def test_a_lowered_threshold_does_not_loosen_requests_already_waiting(rt, repolicy):
    rid = ask(rt)
    repolicy(rt, ("    approvals_required: 2\n", "    approvals_required: 1\n"))
    assert rt.decisions.approve(rid, "U0LEAD1").result == "recorded"
    assert rt.store.get(rid).status == Status.PENDING
    assert rt.decisions.approve(ask(rt), "U0LEAD1").result == "approved", "new requests: loosened"


def test_an_approver_removed_from_the_policy_no_longer_counts_nor_approves(rt, repolicy):
    rid = ask(rt)
    rt.decisions.approve(rid, "U0LEAD2")
    repolicy(rt, ("approvers: [U0LEAD1, U0LEAD2, U0ALICE, S0PRODLEADS]", "approvers: [U0LEAD1, U0ALICE, S0PRODLEADS]"))
    with pytest.raises(E.NotAnApprover):
        rt.decisions.approve(ask(rt), "U0LEAD2")
    assert rt.decisions.approve(rid, "U0LEAD1").result == "recorded", "U0LEAD2's approval no longer counts"
    assert rt.decisions.approve(rid, "U0ALICE").result == "approved"


def test_an_approver_added_later_does_not_approve_requests_made_before(rt, repolicy):
    rid = ask(rt)
    repolicy(rt, ("approvers: [U0LEAD1, U0LEAD2, U0ALICE, S0PRODLEADS]", "approvers: [U0NEW, U0LEAD1, U0LEAD2]"))
    with pytest.raises(E.NotAnApprover):
        rt.decisions.approve(rid, "U0NEW")


def test_a_request_whose_action_was_removed_cannot_be_approved(rt, policy_file):
    rid = ask(rt, "quick")
    text = policy_file.read_text().replace("[deploy-prod, read-secret, quick]", "[deploy-prod, read-secret]")
    rt.set_policy(rt.parse_policy(text[: text.index("  quick:\n")]))  # quick is the last action
    with pytest.raises(E.NotAnApprover, match="no longer in the policy"):
        rt.decisions.approve(rid, "U0LEAD1")
    assert refusals(rt, rid) == ["the action was removed from the policy"]


# ------------------------------------------------------------------ change windows (rules policy)


def test_the_last_approval_must_come_inside_a_window(rrt):
    with freeze_time("2026-12-02 17:59:00"):  # a Wednesday, a minute before closing
        rid = ask(rrt, "office-hours")
    with freeze_time("2026-12-02 18:25:00"):
        with pytest.raises(E.WindowClosed, match="2026-12-03T09:00:00.000Z"):
            rrt.decisions.approve(rid, "U0LEAD1")
        assert rrt.store.get(rid).approvals == []
    assert refusals(rrt, rid) == ["outside the change window"]
    with freeze_time("2026-12-03 09:05:00"):
        assert rrt.decisions.approve(rid, "U0LEAD1").result == "approved"


def test_approvals_before_the_last_may_come_outside_a_window(rrt):
    # change-db: 2 approvals, mon-fri 09:00-18:00 Europe/Paris (UTC+1 in December)
    with freeze_time("2026-12-04 16:55:00"):  # Friday 17:55 in Paris
        rid = ask(rrt, "change-db")
    with freeze_time("2026-12-04 17:10:00"):  # 18:10 in Paris: closed
        assert rrt.decisions.approve(rid, "U0LEAD1").result == "recorded"
        with pytest.raises(E.WindowClosed):
            rrt.decisions.approve(rid, "U0LEAD2")
    assert rrt.store.get(rid).approved_by == ["U0LEAD1"]


# ------------------------------------------------------------------ deny


def test_a_denial_needs_an_approver_and_a_reason(rt):
    rid = ask(rt)
    with pytest.raises(E.NotAnApprover):
        rt.decisions.deny(rid, "U0STRANGER", "no")
    with pytest.raises(E.BadRequest):
        rt.decisions.deny(rid, "U0LEAD1", "   ")
    assert rt.store.get(rid).status == Status.PENDING
    out = rt.decisions.deny(rid, "U0LEAD1", "  not during the freeze  ")
    assert out.ok
    req = rt.store.get(rid)
    assert (req.status, req.decided_by, req.deny_reason) == (Status.DENIED, "U0LEAD1", "not during the freeze")
    denied = [e.body for e in rt.audit.entries_for_request(rid) if e.body["event"] == "request.denied"]
    assert denied[0]["details"] == {"reason": "not during the freeze", "rule": "actions.deploy-prod.approvers"}
    with pytest.raises(E.AlreadyDecided):
        rt.decisions.deny(rid, "U0LEAD2", "again")


def test_a_denial_reason_is_cut_to_its_limit(rt):
    rid = ask(rt)
    rt.decisions.deny(rid, "U0LEAD1", "x" * 2000)
    assert rt.store.get(rid).deny_reason == "x" * 500


# ------------------------------------------------------------------ break glass (rules policy)

JUSTIFICATION = "INC-12: database on fire, restore now"


def test_break_glass_approves_alone_and_cuts_the_ttl_to_its_max(rrt):
    rid = ask(rrt, ttl="1h")  # deploy-prod: 2 approvals; break glass max 10m
    out = rrt.decisions.break_glass(rid, "U0ONCALL", JUSTIFICATION)
    assert (out.result, out.count) == ("approved", 600)
    req = rrt.store.get(rid)
    assert (req.status, req.decided_by, req.ttl) == (Status.APPROVED, "U0ONCALL", timedelta(minutes=10))
    (approved,) = [e.body for e in rrt.audit.entries_for_request(rid) if e.body["event"] == "request.approved"]
    details = approved["details"]
    assert details["break_glass"] and details["follow_up_review"]
    assert details["justification"] == JUSTIFICATION and details["requested_ttl_seconds"] == 3600
    assert details["security_channel"] == "C0SECURITY"


def test_break_glass_by_a_member_of_a_break_glass_group(rrt):
    rid = ask(rrt)
    assert rrt.decisions.break_glass(rid, "U0AUDITOR", JUSTIFICATION).result == "approved"  # in S0SECURITY


def test_break_glass_refusals(rrt, repolicy):
    rid = ask(rrt)
    with pytest.raises(E.NotBreakGlassApprover):
        rrt.decisions.break_glass(rid, "U0LEAD1", JUSTIFICATION)
    with pytest.raises(E.BadRequest, match="justification"):
        rrt.decisions.break_glass(rid, "U0ONCALL", "  fix\u200b  ")
    assert rrt.store.get(rid).status == Status.PENDING
    assert "not a break-glass approver" in refusals(rrt, rid)
    repolicy(rrt, ("  alice: U0ALICE\n", "  alice: U0ALICE\n  oncall: U0ONCALL\n"))
    own = ask(rrt, requested_by="oncall")
    with pytest.raises(E.SelfApproval):
        rrt.decisions.break_glass(own, "U0ONCALL", JUSTIFICATION)
    rrt.decisions.deny(rid, "U0LEAD1", "no")
    with pytest.raises(E.AlreadyDecided):
        rrt.decisions.break_glass(rid, "U0ONCALL", JUSTIFICATION)


def test_break_glass_at_the_pending_timeout_is_refused(rrt):
    with freeze_time("2026-12-02 10:00:00"):
        rid = ask(rrt)  # deploy-prod: 20 min pending timeout
    with freeze_time("2026-12-02 10:20:00"):
        with pytest.raises(E.AlreadyDecided):
            rrt.decisions.break_glass(rid, "U0ONCALL", JUSTIFICATION)
    assert rrt.store.get(rid).status == Status.PENDING and rrt.store.get(rid).approvals == []


def test_an_action_without_break_glass_refuses_it(rt):
    with pytest.raises(E.NoBreakGlass):
        rt.decisions.check_can_break_glass(ask(rt), "U0LEAD1")


def test_a_break_glass_request_is_approved_only_by_breaking_glass(rrt):
    rid = ask(rrt, break_glass=True)
    with pytest.raises(E.BreakGlassOnly):
        rrt.decisions.approve(rid, "U0LEAD1")
    assert rrt.store.get(rid).approvals == []
    assert rrt.decisions.break_glass(rid, "U0ONCALL", JUSTIFICATION).result == "approved"


# ------------------------------------------------------------------ what the message shows


def test_the_message_says_whether_self_approval_is_ruled_out(rt):
    known = rt.store.get(ask(rt, requested_by="alice"))
    unknown = rt.store.get(ask(rt))
    assert rt.decisions.message_facts(known)["self_approval"] == "enforced"
    assert rt.decisions.message_facts(unknown)["self_approval"] == "unknown_requester"
    facts = rt.decisions.message_facts(known)
    assert facts["description"] == "Deploy a release to production"
    assert facts["approvers"] == ["U0LEAD1", "U0LEAD2", "U0ALICE", "S0PRODLEADS"]
