"""A pipeline that authenticates with a CI OIDC token: verified claims fill the request."""

from __future__ import annotations

import json

import pytest
from policy_rules_support import rules_policy_text
from support import policy_text
from test_oidc import EC_KEY, GL_KID, Issuers, github_claims, gitlab_claims, mint


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
      claims: {{repository: acme/deploy, ref: "refs/heads/*"}}
    actions: [read-secret]
  gl-infra:
    oidc:
      issuer: {issuers.gitlab}
      audience: jit-bot
      claims: {{project_path: acme/infra}}
    actions: [read-secret]
actions:
  deploy-prod:""",
        1,
    )
    policy_file.write_text(text)
    return policy_file


def ask(http, token, **body):
    return http.post(
        "/v1/requests",
        json={"action": "read-secret", "reason": "rotate", **body},
        headers={"Authorization": f"Bearer {token}"},
    )


def test_github_token_creates_a_verified_request(oidc_policy, jit, issuers, slack):
    token = mint(github_claims(issuers.github))
    resp = ask(jit.http, token, requested_by="mallory", context={"repository": "evil/repo"})
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert body["pipeline"] == "gh-deploy"
    assert body["requested_by"] == "octocat"  # the verified actor beats the body
    assert body["context"]["repository"] == "acme/deploy" and body["context"]["commit"].startswith("c040cae")
    jit.work()
    blocks = json.dumps(slack.calls("chat.postMessage")[-1].params["blocks"])
    assert "verified" in blocks and "evil/repo" not in blocks
    # follow-ups use the request_token (CI tokens live ~5 minutes)
    assert jit.status(body["id"], token=body["request_token"]).status_code == 200


def test_gitlab_token(oidc_policy, jit, issuers):
    token = mint(gitlab_claims(issuers.gitlab), key=EC_KEY, kid=GL_KID, alg="ES256")
    resp = ask(jit.http, token)
    assert resp.status_code == 201, resp.get_json()
    assert resp.get_json()["pipeline"] == "gl-infra"


def test_rejections_have_the_right_status(oidc_policy, jit, issuers):
    assert ask(jit.http, mint(github_claims(issuers.github, aud="someone-else"))).status_code == 401
    assert ask(jit.http, mint(github_claims(issuers.github, exp=1000, iat=900, nbf=900))).status_code == 401
    assert ask(jit.http, mint(github_claims(issuers.github, repository="acme/other"))).status_code == 403
    assert jit.rt.redis.zcard("jit:idx:all") == 0


@pytest.fixture
def gitlab_auto_approve(policy_file, state_dir, issuers):
    """deploy-staging auto-approves `ref: refs/heads/main` in staging; gl-infra may ask for it."""
    text = rules_policy_text(str(state_dir)).replace(
        "  other-ci:\n",
        f"""  gl-infra:
    oidc:
      issuer: {issuers.gitlab}
      audience: jit-bot
      claims: {{project_path: acme/infra}}
    actions: [deploy-staging]
  other-ci:
""",
        1,
    )
    policy_file.write_text(text)
    return policy_file


def gitlab_token(issuers, **over) -> str:
    claims = gitlab_claims(issuers.gitlab, environment="staging", **over)
    return mint(claims, key=EC_KEY, kid=GL_KID, alg="ES256")


def test_auto_approve_on_a_gitlab_branch_never_matches_a_tag_of_the_same_name(gitlab_auto_approve, jit, issuers):
    branch = ask(jit.http, gitlab_token(issuers), action="deploy-staging")
    assert branch.status_code == 201, branch.get_json()
    body = branch.get_json()
    assert body["status"] == "approved" and body["decided_by"] == "auto"
    ctx = body["context"]
    assert (ctx["ref"], ctx["ref_type"], ctx["ref_protected"]) == ("refs/heads/main", "branch", "true")
    assert (ctx["project_id"], ctx["pipeline_id"], ctx["job_id"]) == ("46573356", "1519139981", "8222997048")

    tag = gitlab_token(issuers, ref_type="tag", ref_path="refs/tags/main")
    resp = ask(jit.http, tag, action="deploy-staging", context={"ref": "refs/heads/main"})
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert body["status"] == "pending" and body["context"]["ref"] == "refs/tags/main"

    # a GitLab too old to send ref_path: its type still decides
    old_tag = gitlab_token(issuers, ref_type="tag", ref_path=None)
    assert ask(jit.http, old_tag, action="deploy-staging").get_json()["status"] == "pending"


def test_the_same_run_asking_again_gets_its_active_grant_and_another_run_does_not(oidc_policy, jit, issuers):
    first = ask(jit.http, mint(github_claims(issuers.github))).get_json()
    jit.approve(first["id"], "U0LEAD1")
    jit.drain(lambda: jit.status(first["id"], token=first["request_token"]).get_json()["status"] == "active")
    again = ask(jit.http, mint(github_claims(issuers.github)))  # a fresh token of the same run
    assert again.status_code == 200, again.get_json()
    assert again.get_json()["id"] == first["id"] and again.get_json()["request_token"] == first["request_token"]
    other_run = ask(jit.http, mint(github_claims(issuers.github, run_id="22259804999")))
    assert other_run.status_code == 201 and other_run.get_json()["id"] != first["id"]
    retried = ask(jit.http, mint(github_claims(issuers.github, run_attempt="2")))  # a re-run is another run
    assert retried.status_code == 201 and retried.get_json()["id"] != first["id"]


def test_an_idempotency_key_never_hands_one_runs_request_to_another_run(oidc_policy, jit, issuers):
    """The client derives its key from public CI data (repository, run, job, action), so another
    run of the same pipeline can compute it; the key promises the same *caller* asking the same
    thing, and a different run is a different caller: it never sees the first run's request_token."""
    key = {"Idempotency-Key": "acme/deploy-22259804324-1-deploy-read-secret"}
    victim = mint(github_claims(issuers.github))
    first = jit.http.post(
        "/v1/requests",
        json={"action": "read-secret", "reason": "rotate"},
        headers={"Authorization": f"Bearer {victim}", **key},
    )
    assert first.status_code == 201, first.get_json()
    other_run = mint(github_claims(issuers.github, run_id="2000002", actor="mallory", ref="refs/heads/mallory"))
    stolen = jit.http.post(
        "/v1/requests",
        json={"action": "read-secret", "reason": "rotate"},
        headers={"Authorization": f"Bearer {other_run}", **key},
    )
    assert stolen.status_code == 422, stolen.get_json()
    assert stolen.get_json()["error"] == "idempotency_key_reused"
    assert first.get_json()["request_token"] not in stolen.get_data(as_text=True)
    assert first.get_json()["id"] not in stolen.get_data(as_text=True)
    # the run that asked can still retry its step and gets its own request back
    again = jit.http.post(
        "/v1/requests",
        json={"action": "read-secret", "reason": "rotate"},
        headers={"Authorization": f"Bearer {mint(github_claims(issuers.github))}", **key},
    )
    assert again.status_code == 200, again.get_json()
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.get_json()["request_token"] == first.get_json()["request_token"]
