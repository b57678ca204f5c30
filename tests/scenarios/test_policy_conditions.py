"""Auto-approval on verified context, with its caps, and approvers chosen per environment."""

from __future__ import annotations

import json

import pytest
from freezegun import freeze_time
from policy_rules_support import entries, rules_policy_text, verified
from test_oidc import Issuers, github_claims, mint

import workers.backends  # noqa: F401 - load C extensions before freezegun fakes datetime
from bot.core import errors as E
from bot.request.schemas import RequestBody


@pytest.fixture
def issuers():
    i = Issuers()
    yield i
    i.close()


@pytest.fixture
def rules(policy_file, state_dir, issuers):
    policy_file.write_text(rules_policy_text(str(state_dir), oidc_issuer=issuers.github))
    return policy_file


def create(rt, action="deploy-staging", ver=None, ttl=None, context=None, pipeline="web-ci"):
    body = RequestBody(action=action, reason="ship it", ttl=ttl, context=context or {})
    return rt.requests.create(pipeline, body, verified=ver).request


# ------------------------------------------------------------------ auto-approval


def test_verified_staging_on_main_is_approved_without_a_human(rules, jit, slack):
    req = create(jit.rt, ver=verified("staging", "refs/heads/main"))
    assert req.status.value == "approved" and req.decided_by == "auto"

    approved = entries(jit.rt, "request.approved", req.id)
    assert len(approved) == 1
    d = approved[0]["details"]
    assert approved[0]["actor"] == "auto"
    assert d["rule"] == "actions.deploy-staging.auto_approve" and d["auto_approved"] is True
    assert d["matched"] == {"environment": "staging", "ref": "refs/heads/main"}
    assert d["count_today"] == 1 and d["max_per_day"] == 2

    jit.work()
    assert jit.rt.store.get(req.id).status.value == "active"
    assert len(jit.grants(req.id)) == 1
    # posted to the channel as a notice: no buttons, names the rule
    post = slack.calls("chat.postMessage")[0]
    text = json.dumps(post.params["blocks"])
    assert "Auto-approved" in text and "actions.deploy-staging.auto_approve" in text
    msg = slack.message(jit.rt.store.get(req.id).message_ts)
    assert not [b for b in msg["blocks"] if b["type"] == "actions" and b["block_id"].startswith("decide:")]
    assert "Approve" not in json.dumps(msg["blocks"])


def test_dev_also_matches_the_environment_list(rules, jit):
    assert create(jit.rt, ver=verified("dev")).decided_by == "auto"


@pytest.mark.parametrize(
    ("ver", "ttl", "why"),
    [
        (verified("production"), None, "environment 'production' is not one of staging, dev"),
        (verified("staging", "refs/heads/feature-x"), None, "ref 'refs/heads/feature-x' is not one of"),
        (verified(None), None, "the verified context has no environment"),
        (verified("staging", None), None, "the verified context has no ref"),
        (verified("staging"), "45m", "ttl 2700s is over the rule's max_ttl of 1800s"),
    ],
    ids=["environment", "ref", "no-environment", "no-ref", "ttl-over-max"],
)
def test_each_condition_that_fails_sends_the_request_to_humans(rules, jit, ver, ttl, why):
    req = create(jit.rt, ver=ver, ttl=ttl)
    assert req.status.value == "pending" and req.decided_by is None
    skipped = entries(jit.rt, "auto_approve.skipped", req.id)
    assert len(skipped) == 1 and why in skipped[0]["details"]["why"]
    assert skipped[0]["details"]["rule"] == "actions.deploy-staging.auto_approve"
    assert entries(jit.rt, "request.approved", req.id) == []
    # a human still can
    assert jit.rt.decisions.approve(req.id, "U0LEAD1").result == "approved"


def test_a_ttl_at_the_rule_max_still_qualifies(rules, jit):
    assert create(jit.rt, ver=verified("staging"), ttl="30m").decided_by == "auto"


def test_what_a_static_token_pipeline_writes_never_auto_approves(rules, jit):
    resp = jit.ask(
        "deploy-staging",
        context={"environment": "staging", "ref": "refs/heads/main", "repository": "acme/deploy"},
    )
    assert resp["status"] == "pending"
    skipped = entries(jit.rt, "auto_approve.skipped", resp["id"])
    assert skipped and "not verified" in skipped[0]["details"]["why"]


def test_the_daily_cap_per_pipeline_sends_the_rest_to_humans(rules, jit):
    with freeze_time("2026-05-04T10:00:00Z"):
        first = create(jit.rt, ver=verified())
        second = create(jit.rt, ver=verified())
        third = create(jit.rt, ver=verified())
    assert [r.decided_by for r in (first, second)] == ["auto", "auto"]
    assert third.status.value == "pending"
    skipped = entries(jit.rt, "auto_approve.skipped", third.id)
    assert "daily cap of 2" in skipped[0]["details"]["why"]
    with freeze_time("2026-05-04T23:59:00Z"):
        assert create(jit.rt, ver=verified()).status.value == "pending"
    with freeze_time("2026-05-05T00:00:30Z"):  # a new UTC day
        assert create(jit.rt, ver=verified()).decided_by == "auto"


def test_break_glass_requests_never_auto_approve(rules, jit):
    body = RequestBody(action="deploy-staging", reason="x", break_glass=True)
    req = jit.rt.requests.create("web-ci", body, verified=verified()).request
    assert req.status.value == "pending"


def test_a_real_oidc_token_over_http_is_auto_approved(rules, jit, issuers):
    token = mint(github_claims(issuers.github, environment="staging"))
    resp = jit.http.post(
        "/v1/requests",
        json={"action": "deploy-staging", "reason": "ship", "context": {"environment": "production"}},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert body["pipeline"] == "gh-deploy" and body["status"] == "approved"
    assert body["decided_by"] == "auto" and body["context"]["environment"] == "staging"

    prod = mint(github_claims(issuers.github))  # environment: production
    resp = jit.http.post(
        "/v1/requests",
        json={"action": "deploy-staging", "reason": "ship", "context": {"environment": "staging"}},
        headers={"Authorization": f"Bearer {prod}"},
    )
    assert resp.status_code == 201 and resp.get_json()["status"] == "pending"


# ------------------------------------------------------------------ approvers per environment


def test_approvers_follow_the_requests_environment(rules, jit, slack):
    staging = jit.ask("deploy-env", context={"environment": "staging"})["id"]
    prod = jit.ask("deploy-env", context={"environment": "prod"})["id"]
    jit.work()

    with pytest.raises(E.NotAnApprover):
        jit.rt.decisions.approve(staging, "U0LEAD1")  # a prod approver
    with pytest.raises(E.NotAnApprover):
        jit.rt.decisions.approve(prod, "U0DEV1")  # a staging approver
    refused = entries(jit.rt, "approval.refused")
    assert {r["request_id"] for r in refused} == {staging, prod}

    assert jit.approve(staging, "U0DEV1").status_code == 200
    assert jit.approve(prod, "U0LEAD2").status_code == 200
    jit.work()
    assert jit.status(staging).get_json()["status"] == "active"
    assert jit.status(prod).get_json()["status"] == "active"


def test_the_message_lists_the_environments_approvers(rules, jit):
    rid = jit.ask("deploy-env", context={"environment": "staging"})["id"]
    facts = jit.rt.decisions.message_facts(jit.rt.store.get(rid))
    assert facts["approvers"] == ["U0DEV1"]


def test_an_environment_without_approvers_is_refused(rules, jit):
    missing = jit.ask("deploy-env", expect=400)
    assert missing["error"] == "bad_request" and "context.environment is required" in missing["message"]
    assert "prod, staging" in missing["message"]
    unknown = jit.ask("deploy-env", context={"environment": "qa"}, expect=400)
    assert "'qa' is not one of prod, staging" in unknown["message"]
    assert jit.rt.redis.zcard("jit:idx:all") == 0


def test_a_verified_environment_beats_the_body_for_approver_choice(rules, jit):
    req = create(jit.rt, "deploy-env", ver=verified("prod"), context={"environment": "staging"})
    assert req.context["environment"] == "prod"
    assert jit.rt.rules.is_approver("deploy-env", "U0LEAD1", req)
    assert not jit.rt.rules.is_approver("deploy-env", "U0DEV1", req)
    # without a request: an approver in some environment (the audit view uses this)
    assert jit.rt.rules.is_approver("deploy-env", "U0DEV1")


def test_a_request_without_environment_uses_the_default_approvers(rules, jit):
    rid = jit.ask("deploy-staging")["id"]
    with pytest.raises(E.NotAnApprover):
        jit.rt.decisions.approve(rid, "U0DEV1")
    assert jit.rt.decisions.approve(rid, "U0LEAD1").result == "approved"
