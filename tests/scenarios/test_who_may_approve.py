"""Who may approve, and who may take the credential — against what a pipeline or a reload tries."""

from __future__ import annotations

import json

import pytest
from fakes.slack import event_callback, slash_command
from support import WEB_TOKEN, policy_text
from test_oidc import Issuers, github_claims, mint

from bot.store import keys


def refusals(jit, rid):
    jit.rt.audit.flush()
    return [
        e.body["details"].get("why")
        for e in jit.rt.audit.entries_for_request(rid)
        if e.body["event"].endswith(".refused")
    ]


# ------------------------------------------------------------------ the requester is a person


@pytest.mark.parametrize(
    "spelling",
    [
        " alice@example.com",
        "alice@example.com ",
        "ALICE@Example.com",
        "alice\u200b@example.com",
        "alice@example.com\u2060",
        "\uff41lice@example.com",  # fullwidth a: NFKC makes it a
    ],
)
def test_every_spelling_of_the_requester_is_the_requester(jit, spelling):
    rid = jit.ask("deploy-prod", requested_by=spelling)["id"]
    assert jit.rt.store.get(rid).requester_slack_id == "U0ALICE"
    jit.work()
    jit.approve(rid, "U0ALICE")
    jit.work()
    assert jit.status(rid).get_json()["approvals"]["count"] == 0
    assert "self-approval" in refusals(jit, rid)


def test_a_slack_id_in_requested_by_names_nobody(jit, slack):
    """A pipeline cannot make an approver 'the requester' (blocking them, sending them DMs)."""
    rid = jit.ask("deploy-prod", requested_by="U0LEAD1")["id"]
    assert jit.rt.store.get(rid).requester_slack_id is None
    jit.work()
    jit.approve(rid, "U0LEAD1")
    jit.work()
    assert jit.status(rid).get_json()["approvals"]["count"] == 1


def test_an_unknown_requester_is_said_plainly_in_the_message(jit, slack):
    rid = jit.ask("deploy-prod")["id"]  # no requested_by: nobody can rule out self-approval
    blocks = json.dumps(slack.message(jit.wait_for_message(rid).message_ts)["blocks"])
    assert "The requester is not a known person" in blocks
    named = jit.ask("deploy-prod", requested_by="alice@example.com")["id"]
    msg = slack.message(jit.wait_for_message(named).message_ts)
    assert "not a known person" not in json.dumps(msg["blocks"])


def test_policy_can_refuse_requests_from_unknown_people(jit, policy_file):
    from bot.wiring import load_policy

    policy_file.write_text(
        policy_file.read_text().replace(
            "  pending_timeout: 30m\n", "  pending_timeout: 30m\n  unknown_requester: refuse\n", 1
        )
    )
    jit.rt.set_policy(load_policy(policy_file))
    assert jit.ask("deploy-prod", expect=403)["error"] == "requester_unknown"
    assert jit.ask("read-secret", requested_by="nobody-we-know", expect=403)["error"] == "requester_unknown"
    assert jit.rt.redis.zcard(keys.all_requests()) == 0  # refused before anything was stored
    assert jit.ask("deploy-prod", requested_by="alice@example.com")["status"] == "pending"


def test_two_people_entries_that_normalise_alike_are_a_policy_error(tmp_path, state_dir):
    from bot.core.errors import PolicyError
    from bot.wiring import parse_policy

    text = policy_text(str(state_dir)).replace("  alice: U0ALICE\n", "  alice: U0ALICE\n  ' ALICE': U0LEAD1\n", 1)
    with pytest.raises(PolicyError) as e:
        parse_policy(text)
    assert any("names the same person" in line for line in e.value.errors)


# ------------------------------------------------------------------ tightening applies at once


def reload_with(jit, policy_file, old, new):
    from bot.wiring import load_policy

    policy_file.write_text(policy_file.read_text().replace(old, new, 1))
    jit.rt.set_policy(load_policy(policy_file))


def test_an_approver_removed_by_a_reload_cannot_approve_requests_already_waiting(jit, policy_file):
    rid = jit.ask("deploy-prod")["id"]
    jit.work()
    reload_with(
        jit,
        policy_file,
        "approvers: [U0LEAD1, U0LEAD2, U0ALICE, S0PRODLEADS]",
        "approvers: [U0LEAD2, U0ALICE, S0PRODLEADS]",
    )
    jit.approve(rid, "U0LEAD1")
    jit.work()
    assert jit.status(rid).get_json()["approvals"]["count"] == 0
    assert "not an approver" in refusals(jit, rid)


def test_an_approval_given_before_the_approver_was_removed_no_longer_counts(jit, policy_file):
    rid = jit.ask("deploy-prod")["id"]
    jit.work()
    jit.approve(rid, "U0LEAD1")
    jit.work()
    reload_with(
        jit,
        policy_file,
        "approvers: [U0LEAD1, U0LEAD2, U0ALICE, S0PRODLEADS]",
        "approvers: [U0LEAD2, U0ALICE, S0PRODLEADS]",
    )
    jit.approve(rid, "U0LEAD2")
    jit.work()
    assert jit.status(rid).get_json()["status"] == "pending"  # U0LEAD1's approval is void now
    jit.approve(rid, "U0LEAD3")  # via the group
    jit.work()
    assert jit.status(rid).get_json()["status"] == "active"


def test_raising_approvals_required_applies_to_waiting_requests_and_lowering_does_not(jit, policy_file):
    raised = jit.ask("read-secret")["id"]
    jit.work()
    reload_with(
        jit,
        policy_file,
        "    approvers: [U0LEAD1, U0ALICE]\n",
        "    approvers: [U0LEAD1, U0ALICE, U0LEAD2]\n    approvals_required: 2\n",
    )
    jit.approve(raised, "U0LEAD1")
    jit.work()
    assert jit.status(raised).get_json()["status"] == "pending"  # needs two now
    # created under "2 required": lowering back to 1 does not apply to it
    lowered = jit.ask("read-secret")["id"]
    jit.work()
    reload_with(
        jit,
        policy_file,
        "U0LEAD1, U0ALICE, U0LEAD2]\n    approvals_required: 2\n",
        "U0LEAD1, U0ALICE, U0LEAD2, U0NEWCOMER]\n",
    )
    jit.approve(lowered, "U0LEAD1")
    jit.work()
    assert jit.status(lowered).get_json()["status"] == "pending"
    # and an approver added by the loosening reload does not count for it either
    jit.approve(lowered, "U0NEWCOMER")
    jit.work()
    assert jit.status(lowered).get_json()["status"] == "pending"
    assert "not an approver" in refusals(jit, lowered)


def test_an_action_removed_from_the_policy_cannot_be_approved_or_granted(jit, policy_file):
    pending = jit.ask("read-secret")["id"]
    approved = jit.ask("read-secret")["id"]
    jit.work()
    jit.rt.decisions.approve(approved, "U0LEAD1")  # approved, its grant not yet run
    text = policy_file.read_text()
    start = text.index("  read-secret:\n    description")
    end = text.index("  quick:\n")
    policy_file.write_text(
        (text[:start] + text[end:])
        .replace("actions: [deploy-prod, read-secret, quick]", "actions: [deploy-prod, quick]")
        .replace("    actions: [read-secret]\n", "    actions: [quick]\n")
    )
    from bot.wiring import load_policy

    jit.rt.set_policy(load_policy(policy_file))
    jit.approve(pending, "U0LEAD1")
    jit.work()
    assert jit.status(pending).get_json()["status"] == "pending"
    body = jit.status(approved).get_json()
    assert body["status"] == "failed" and "removed" in body["error"]
    assert jit.credential(approved).status_code == 410


def test_a_user_removed_from_a_group_stops_counting_when_slack_says_so(jit, slack):
    rid = jit.ask("deploy-prod")["id"]
    jit.work()
    assert jit.rt.rules.is_approver("deploy-prod", "U0LEAD3", jit.rt.store.get(rid))  # cached now
    slack.usergroups["S0PRODLEADS"] = ["U0LEAD4"]
    assert (
        jit.post_slack(
            event_callback(
                {"type": "subteam_members_changed", "subteam_id": "S0PRODLEADS", "removed_users": ["U0LEAD3"]}
            )
        ).status_code
        == 200
    )
    jit.approve(rid, "U0LEAD3")
    jit.work()
    assert jit.status(rid).get_json()["approvals"]["count"] == 0


def test_group_membership_is_never_read_from_a_cache_older_than_a_minute(jit):
    from bot.decision.slack.directory import CACHE_SECONDS

    jit.rt.directory.members("S0PRODLEADS")
    assert 0 < jit.rt.redis.ttl(keys.usergroup_members("S0PRODLEADS")) <= CACHE_SECONDS <= 60


# ------------------------------------------------------------------ the credential is the run's


@pytest.fixture
def issuers():
    i = Issuers()
    yield i
    i.close()


@pytest.fixture
def oidc_policy(policy_file, state_dir, issuers):
    text = policy_text(str(state_dir)).replace(
        "actions:\n  deploy-prod:",
        f"""  gh-deploy:
    oidc:
      issuer: {issuers.github}
      audience: jit-bot
      claims: {{repository: acme/deploy}}
    actions: [read-secret, by-env]
actions:
  by-env:
    approvers_by_environment:
      production: [U0LEAD1]
      sandbox: [U0LEAD2]
    grant: {{type: token, audience: env-api}}
  deploy-prod:""",
        1,
    )
    policy_file.write_text(text)
    return policy_file


def oidc(http, token, method="get", path="", **kw):
    return getattr(http, method)(f"/v1/requests{path}", headers={"Authorization": f"Bearer {token}"}, **kw)


def test_only_the_same_run_may_take_the_credential(oidc_policy, jit, issuers):
    run = github_claims(issuers.github)
    created = oidc(jit.http, mint(run), "post", json={"action": "read-secret", "reason": "rotate"}).get_json()
    rid = created["id"]
    jit.work()
    jit.rt.decisions.approve(rid, "U0LEAD1")
    jit.work()
    # another job of the same repository: another branch and actor, another run
    sibling = mint(github_claims(issuers.github, ref="refs/heads/evil", actor="mallory", run_id="777"))
    for path in (f"/{rid}", f"/{rid}/credential"):
        assert oidc(jit.http, sibling, path=path).status_code == 404
    assert oidc(jit.http, sibling, "delete", path=f"/{rid}").status_code == 404
    # a re-run (next attempt) of the same run is another run too
    assert oidc(jit.http, mint(github_claims(issuers.github, run_attempt="2")), path=f"/{rid}").status_code == 404
    # the static pipeline token of some other pipeline, too
    assert oidc(jit.http, WEB_TOKEN, path=f"/{rid}").status_code == 404
    # the same run's fresh token (CI tokens live minutes) and the request_token work
    same = oidc(jit.http, mint(github_claims(issuers.github)), path=f"/{rid}/credential")
    assert same.status_code == 200
    assert oidc(jit.http, created["request_token"], path=f"/{rid}/credential").status_code == 200
    jit.rt.audit.flush()
    fetched = [
        e.body["details"]["via"]
        for e in jit.rt.audit.entries_for_request(rid)
        if e.body["event"] == "credential.fetched"
    ]
    assert fetched == [f"oidc:acme/deploy/{run['run_id']}/1", "request_token"]


def test_a_verified_request_takes_its_routing_fields_from_the_token_only(oidc_policy, jit, issuers):
    no_env = mint(github_claims(issuers.github, environment=None))
    resp = oidc(
        jit.http, no_env, "post", json={"action": "by-env", "reason": "x", "context": {"environment": "sandbox"}}
    )
    assert resp.status_code == 400 and "environment" in resp.get_json()["message"]
    assert jit.rt.redis.zcard(keys.all_requests()) == 0
    # with the claim, the token's environment routes (the body cannot override it)
    ok = oidc(
        jit.http,
        mint(github_claims(issuers.github)),
        "post",
        json={"action": "by-env", "reason": "x", "context": {"environment": "sandbox"}},
    )
    assert ok.status_code == 201, ok.get_json()
    body = ok.get_json()
    assert body["context"]["environment"] == "production" and "environment" in body["verified_fields"]
    req = jit.rt.store.get(body["id"])
    assert jit.rt.rules.is_approver("by-env", "U0LEAD1", req)
    assert not jit.rt.rules.is_approver("by-env", "U0LEAD2", req)


def test_the_message_says_which_values_the_token_vouches_for(oidc_policy, jit, issuers, slack):
    token = mint(github_claims(issuers.github))
    rid = oidc(
        jit.http, token, "post", json={"action": "read-secret", "reason": "x", "context": {"ticket": "OPS-1"}}
    ).get_json()["id"]
    jit.work()
    blocks = json.dumps(slack.calls("chat.postMessage")[-1].params["blocks"])
    assert "verified" in blocks
    assert jit.rt.store.get(rid).verified_keys and "ticket" not in jit.rt.store.get(rid).verified_keys


# ------------------------------------------------------------------ who may read a request


def test_status_of_one_request_is_for_its_approvers_auditors_and_requester(jit, slack, policy_file):
    rid = jit.ask("deploy-prod", reason="secret project", requested_by="alice@example.com")["id"]
    jit.work()

    def status_as(user):
        resp = jit.post_slack(slash_command(f"status {rid}", user))
        assert resp.status_code == 200
        return str(resp.get_json())

    for allowed in ("U0LEAD1", "U0LEAD3", "U0AUDITOR", "U0ALICE"):  # approver, via group, auditor, requester
        assert "secret project" in status_as(allowed), allowed
    refused = status_as("U0STRANGER")
    assert "secret project" not in refused and "approvers, auditors and requester" in refused
    assert "not an approver, auditor or the requester" in refusals(jit, rid)

    reload_with(jit, policy_file, "  pending_timeout: 30m\n", "  pending_timeout: 30m\n  status_visibility: everyone\n")
    assert "secret project" in status_as("U0STRANGER")


# ------------------------------------------------------------------ break glass needs visible words


def test_a_justification_of_invisible_characters_is_refused(jit, policy_file):
    from bot.core.errors import BadRequest

    reload_with(
        jit,
        policy_file,
        "auditors: [S0SECURITY, U0AUDITOR2]\n",
        "auditors: [S0SECURITY, U0AUDITOR2]\nbreak_glass:\n  approvers: [U0ONCALL]\n  security_channel: C0SECURITY\n",
    )
    rid = jit.ask("deploy-prod")["id"]
    for text in ("\u200b" * 10, "ok" + "\u200b" * 12, " \u2060 \ufeff " * 6 + "x", "\u202e" * 20):
        with pytest.raises(BadRequest):
            jit.rt.decisions.break_glass(rid, "U0ONCALL", text)
    assert jit.rt.store.get(rid).status == "pending"
    assert jit.rt.decisions.break_glass(rid, "U0ONCALL", "INC-4\u200b: restore payments").result == "approved"
    assert (
        jit.rt.store.fields(rid, "break_glass_justification")["break_glass_justification"] == "INC-4: restore payments"
    )
