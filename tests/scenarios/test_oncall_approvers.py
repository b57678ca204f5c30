"""On-call approvers: whoever PagerDuty or Opsgenie puts on call may approve, matched to Slack by
email; a hand-over moves the right at once (cache aside); an unreadable provider counts nobody and
says so; a requester on call at the first escalation level is approved without a human."""

from __future__ import annotations

import json
import time

import pytest
from approvals_support import ONCALL, rules_of_request, staff_oncall, with_actions
from fakes.opsgenie import OpsgenieFake
from fakes.pagerduty import PagerDutyFake
from policy_rules_support import entries

from bot.core import errors as E
from bot.core.policy.approvals import OnCallUnavailable
from bot.request.schemas import RequestBody


@pytest.fixture
def pagerduty():
    with PagerDutyFake() as fake:
        yield fake


@pytest.fixture
def opsgenie():
    with OpsgenieFake() as fake:
        yield fake


@pytest.fixture
def jit_env(jit_env, monkeypatch, pagerduty, opsgenie, slack):
    staff_oncall(pagerduty, opsgenie, slack)
    env = {
        "PAGERDUTY_TOKEN": pagerduty.token,
        "PAGERDUTY_API_URL": pagerduty.url,
        "OPSGENIE_API_KEY": opsgenie.api_key,
        "OPSGENIE_API_URL": opsgenie.url,
        "JIT_ONCALL_CACHE_SECONDS": "0",  # every click asks the provider (the cache has its own test)
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return {**jit_env, **env}


@pytest.fixture
def policy_file(tmp_path, state_dir):
    p = tmp_path / "jit-policy.yaml"
    p.write_text(with_actions(str(state_dir), ONCALL))
    return p


def status(jit, rid):
    return jit.status(rid).get_json()["status"]


def test_whoever_pagerduty_has_on_call_may_approve(jit, pagerduty):
    rid = jit.ask("hotfix")["id"]
    with pytest.raises(E.NotAnApprover):
        jit.rt.decisions.approve(rid, "U0ONB")  # not on call
    with pytest.raises(E.NotAnApprover):
        jit.rt.decisions.approve(rid, "U0ONC")  # on call, but at escalation level 2
    assert jit.rt.decisions.approve(rid, "U0ONA").result == "approved"
    asked = pagerduty.requests[-1]
    assert asked.path == "/oncalls" and asked.query["schedule_ids[]"] == ["PSCHED1"]
    assert asked.query["include[]"] == ["users"]
    given = [e for e in entries(jit.rt, "approval.given", rid)]
    assert given[-1]["details"]["oncall"] == ["pagerduty/PSCHED1/1"]


def test_whoever_opsgenie_has_on_call_may_approve(jit, opsgenie):
    rid = jit.ask("ops-fix")["id"]
    with pytest.raises(E.NotAnApprover):
        jit.rt.decisions.approve(rid, "U0ONA")
    assert jit.rt.decisions.approve(rid, "U0ONB").result == "approved"
    asked = opsgenie.requests[-1]
    assert asked.path == "/v2/schedules/ops-primary/on-calls"
    assert asked.query["scheduleIdentifierType"] == ["name"] and asked.query["flat"] == ["true"]


def test_a_hand_over_between_schedule_layers_moves_the_right_to_approve(jit, pagerduty, opsgenie):
    rid = jit.ask("hotfix")["id"]
    pagerduty.on_call("PSCHED1", "PUB0002", layer=1)  # an override layer: Ben takes over from Ana
    with pytest.raises(E.NotAnApprover):
        jit.rt.decisions.approve(rid, "U0ONA")
    assert jit.rt.decisions.approve(rid, "U0ONB").result == "approved"

    ops = jit.ask("ops-fix")["id"]
    opsgenie.on_call("ops-primary", "ana@example.com")  # the rotation moves on to Ana
    with pytest.raises(E.NotAnApprover):
        jit.rt.decisions.approve(ops, "U0ONB")
    assert jit.rt.decisions.approve(ops, "U0ONA").result == "approved"


def test_an_approval_given_while_on_call_still_counts_after_the_hand_over(jit, pagerduty):
    rid = jit.ask("hotfix-pair")["id"]
    assert jit.rt.decisions.approve(rid, "U0ONA").result == "recorded"
    pagerduty.on_call("PSCHED1", "PUB0002", layer=1)
    assert jit.rt.decisions.approve(rid, "U0LEAD1").result == "approved"


@pytest.mark.parametrize("outage", ["down", "503"])
def test_an_unreachable_provider_fails_closed_and_the_message_says_so(jit, pagerduty, slack, outage):
    rid = jit.ask("hotfix")["id"]
    if outage == "down":
        pagerduty.stop()
    else:
        pagerduty.failing = 503
    with pytest.raises(OnCallUnavailable) as refused:
        jit.rt.decisions.approve(rid, "U0ONA")
    assert "PagerDuty" in refused.value.message and "PSCHED1" in refused.value.message
    assert status(jit, rid) == "pending"
    jit.work()
    text = json.dumps(slack.message(jit.rt.store.get(rid).message_ts)["blocks"])
    assert "on call for PagerDuty schedule PSCHED1" in text and "nobody counts as on call" in text
    # the approvers the policy names by id are not affected
    assert jit.rt.decisions.approve(rid, "U0LEAD1").result == "approved"


def test_a_provider_that_hangs_is_given_up_on_within_the_lookups_budget(jit, pagerduty):
    """A click waits for the on-call lookup and Slack gives a click 3 s: a PagerDuty that hangs
    fails closed within the lookup's budget instead of holding the click (attack review)."""
    rid = jit.ask("hotfix")["id"]
    pagerduty.stall = 30
    started = time.monotonic()
    with pytest.raises(OnCallUnavailable) as refused:
        jit.rt.decisions.approve(rid, "U0ONA")
    waited = time.monotonic() - started
    assert "PagerDuty did not answer" in refused.value.message
    assert waited < 15, f"the click waited {waited:.1f} s for a provider that hangs for 30 s"
    assert status(jit, rid) == "pending"
    assert jit.rt.decisions.approve(rid, "U0LEAD1").result == "approved"  # approvers named by id still count


def test_without_a_key_a_provider_counts_nobody(jit, monkeypatch, pagerduty):
    jit.rt.oncall.pagerduty = type(jit.rt.oncall.pagerduty)(pagerduty.url, None)
    rid = jit.ask("hotfix")["id"]
    with pytest.raises(OnCallUnavailable) as refused:
        jit.rt.decisions.approve(rid, "U0ONA")
    assert "PAGERDUTY_TOKEN is not set" in refused.value.message
    assert pagerduty.requests == []


def test_who_is_on_call_is_cached_briefly(jit, pagerduty):
    jit.rt.oncall.cache_seconds = 30
    rid = jit.ask("hotfix-pair")["id"]
    with pytest.raises(E.NotAnApprover):
        jit.rt.decisions.approve(rid, "U0ONB")
    jit.rt.decisions.approve(rid, "U0ONA")
    assert len(pagerduty.requests) == 1
    assert 0 < jit.rt.redis.ttl(next(iter(jit.rt.redis.scan_iter("jit:cache:oncall:*")))) <= 30


def test_the_current_on_call_is_told_in_a_direct_message_once(jit, slack):
    rid = jit.ask("hotfix")["id"]
    jit.work()
    dms = [c for c in slack.calls("chat.postMessage") if c.params.get("channel") == "U0ONA"]
    assert len(dms) == 1 and "You are on call" in dms[0].params["text"] and rid in dms[0].params["text"]
    jit.rt.decisions.approve(rid, "U0LEAD1")
    jit.work()
    assert len([c for c in slack.calls("chat.postMessage") if c.params.get("channel") == "U0ONA"]) == 1


# ------------------------------------------------------------------ auto-approval of the on-call requester


def ask_verified(rt, requested_by: str, *, body_only: bool = False):
    body = RequestBody(action="self-serve", reason="pager went off", context={"environment": "prod"})
    if body_only:
        body = RequestBody(action="self-serve", reason="pager went off", requested_by=requested_by)
        return rt.requests.create("web-ci", body).request
    verified = {"context": {"repository": "acme/deploy", "environment": "prod"}, "requested_by": requested_by}
    return rt.requests.create("web-ci", body, verified=verified).request


def test_a_requester_on_call_at_the_first_level_is_approved_without_a_human(jit, pagerduty):
    pagerduty.on_call("PSCHED1", "PUALICE", layer=1)  # alice is on call at level 1
    req = ask_verified(jit.rt, "alice")
    assert req.status.value == "approved" and req.decided_by == "auto"
    assert jit.rt.store.fields(req.id, "rule")["rule"] == "actions.self-serve.auto_approve[1]"
    assert rules_of_request(jit.rt, req.id)["request.approved"] == "actions.self-serve.auto_approve[1]"


def test_a_requester_on_call_only_at_the_second_level_goes_to_humans(jit, pagerduty):
    pagerduty.on_call("PSCHED2", "PUALICE", layer=1)  # alice is on call, at level 2
    req = ask_verified(jit.rt, "alice")
    assert req.status.value == "pending"
    skipped = entries(jit.rt, "auto_approve.skipped", req.id)
    assert "the requester is not on call for PagerDuty schedule PSCHED1 (level 1)" in skipped[0]["details"]["why"]


def test_a_requester_the_pipeline_merely_names_is_never_approved_for_being_on_call(jit, pagerduty):
    pagerduty.on_call("PSCHED1", "PUALICE", layer=1)
    req = ask_verified(jit.rt, "alice", body_only=True)
    assert req.status.value == "pending"


def test_an_unreadable_schedule_never_auto_approves(jit, pagerduty):
    pagerduty.on_call("PSCHED1", "PUALICE", layer=1)
    pagerduty.stop()
    req = ask_verified(jit.rt, "alice")
    assert req.status.value == "pending"
    why = entries(jit.rt, "auto_approve.skipped", req.id)[0]["details"]["why"]
    assert "could not be read" in why and "unreachable" in why


def test_a_reload_that_changes_on_call_entries_is_audited_with_what_changed(jit, policy_file, state_dir):
    from bot.wiring import load_policy

    jit.rt.record_policy_loaded()
    policy_file.write_text(
        with_actions(str(state_dir), ONCALL.replace("schedule: ops-primary", "schedule: ops-backup"))
    )
    jit.rt.set_policy(load_policy(policy_file))
    assert jit.rt.record_policy_loaded("file")
    loaded = entries(jit.rt, "policy.loaded")[-1]["details"]["changes"]["approvers"]["ops-fix"]
    assert loaded == {
        "added": ["on call for Opsgenie schedule ops-backup"],
        "removed": ["on call for Opsgenie schedule ops-primary"],
    }
