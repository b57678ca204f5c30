"""A GitLab deployment blocked for approval waits until approvers click in Slack; jit approves it through
GitLab's deployment approval API, and the job's `id_tokens` token then collects its credential.
Real processes, GitLab's and Slack's wire formats from the test servers."""

from __future__ import annotations

import json
import subprocess

import pytest
import redis as redislib
import requests
from fakes.gitlab import GitLabFake, delivery, deployment_event
from fakes.slack import block_action, view_submission
from procs import JIT, Stack, wait_until
from redis_state import stored_approvals
from support import ROOT
from test_oidc import EC_KEY, GL_KID, Issuers, gitlab_claims, mint

HOOK_TOKEN = "gitlab-hook-secret-0123456789"
PROJECT, PROJECT_ID = "acme/infra", 46573356
SHA = "8fe1b322a576d59fe6257052a4107df7dc1b8c78"


def gate_policy(issuer: str) -> str:
    return f"""\
defaults:
  channel: C0APPROVALS
people:
  alice: U0ALICE
pipelines:
  infra-production:
    gitlab: {{project: {PROJECT}, environment: production}}
    oidc:
      issuer: {issuer}
      audience: jit-bot
      claims: {{project_path: {PROJECT}, environment: production}}
    actions: [deploy-infra]
actions:
  deploy-infra:
    description: Apply acme/infra to production
    approvers: [U0LEAD1, U0LEAD2, U0ALICE]
    approvals_required: 2
    grant:
      type: token
      audience: infra-prod
"""


@pytest.fixture(scope="module")
def world():
    issuers = Issuers()
    gl = GitLabFake().start()
    env = {"GITLAB_URL": gl.url, "GITLAB_WEBHOOK_TOKEN": HOOK_TOKEN, "GITLAB_API_TOKEN": gl.token}
    stack = Stack(policy=gate_policy(issuers.gitlab), extra_env=env)
    try:
        stack.serve()
        stack.worker()
        yield stack, gl, issuers
    finally:
        stack.close()
        gl.stop()
        issuers.close()


def blocked(gl: GitLabFake, deployment_id: int, username: str = "bob") -> dict:
    return gl.blocked_deployment(
        project_path=PROJECT,
        project_id=PROJECT_ID,
        deployment_id=deployment_id,
        job_id=deployment_id * 10,
        pipeline_id=deployment_id * 100,
        environment="production",
        sha=SHA,
        username=username,
    )


def send(stack: Stack, payload: dict, token: str = HOOK_TOKEN) -> requests.Response:
    body, headers = delivery(token, payload)
    return requests.post(stack.url + "/gitlab/webhook", data=body, headers=headers, timeout=15)


def job_token(issuers: Issuers, deployment_id: int, job_id: int | None = None) -> str:
    claims = gitlab_claims(
        issuers.gitlab,
        project_path=PROJECT,
        project_id=str(PROJECT_ID),
        pipeline_id=str(deployment_id * 100),
        job_id=str(job_id if job_id is not None else deployment_id * 10),
        environment="production",
        sha=SHA,
    )
    return mint(claims, key=EC_KEY, kid=GL_KID, alg="ES256")


def click(stack: Stack, rid: str, user: str, action: str = "jit_approve", **kw) -> requests.Response:
    ts = stack.message_ts(rid)
    return stack.slack_post(block_action(action, rid, user, channel="C0APPROVALS", message_ts=ts, **kw))


def redis_of(stack: Stack) -> redislib.Redis:
    return redislib.Redis.from_url(stack.redis.url, decode_responses=True)


def test_two_slack_approvals_approve_the_gitlab_deployment_and_its_job_collects_the_credential(world):
    stack, gl, issuers = world
    resp = send(stack, blocked(gl, 501))
    assert resp.status_code == 202, resp.text
    rid = resp.json()["request"]
    assert "acme/infra" in json.dumps(stack.slack.message(stack.message_ts(rid))["blocks"])

    click(stack, rid, "U0LEAD1")
    wait_until(lambda: len(stored_approvals(redis_of(stack), rid)) == 1, message="first approval")
    assert gl.decided(501) == []
    click(stack, rid, "U0LEAD2")
    approval = wait_until(lambda: gl.decided(501), message="GitLab hears the decision")[0]
    assert approval.body["status"] == "approved"
    assert "U0LEAD1" in approval.body["comment"] and "U0LEAD2" in approval.body["comment"]

    mine = requests.post(
        stack.url + "/v1/requests",
        json={"action": "deploy-infra", "reason": "apply"},
        headers={"Authorization": f"Bearer {job_token(issuers, 501)}"},
        timeout=15,
    )
    assert mine.status_code == 200, mine.text
    assert mine.json()["id"] == rid
    rtok = mine.json()["request_token"]
    stack.wait_status(rid, rtok, {"active"})
    assert stack.get(rid, rtok, path="/credential").status_code == 200

    other = requests.post(
        stack.url + "/v1/requests",
        json={"action": "deploy-infra", "reason": "apply"},
        headers={"Authorization": f"Bearer {job_token(issuers, 501, job_id=999)}"},
        timeout=15,
    )
    assert other.status_code == 403, other.text


def test_deny_rejects_the_deployment_with_the_reason(world):
    stack, gl, _ = world
    rid = send(stack, blocked(gl, 502)).json()["request"]
    trigger = "502.42.abc"
    click(stack, rid, "U0LEAD1", "jit_deny", trigger_id=trigger, button_text="Deny")
    opened = wait_until(
        lambda: [c for c in stack.slack.calls("views.open") if c.params.get("trigger_id") == trigger],
        message="the deny modal",
    )
    view = opened[0].params["view"]
    stack.slack_post(
        view_submission(
            view["callback_id"], view["private_metadata"], {"reason": {"reason_input": "change freeze"}}, "U0LEAD2"
        )
    )
    approval = wait_until(lambda: gl.decided(502), message="GitLab hears the denial")[0]
    assert approval.body["status"] == "rejected" and "change freeze" in approval.body["comment"]


def test_a_wrong_token_is_refused_and_creates_nothing(world):
    stack, gl, _ = world
    before = redis_of(stack).zcard("jit:idx:all")
    assert send(stack, blocked(gl, 503), token="guessed").status_code == 401
    assert send(stack, blocked(gl, 503), token="").status_code == 401
    assert redis_of(stack).zcard("jit:idx:all") == before
    assert gl.approvals == [] or all(a.deployment_id != 503 for a in gl.approvals)


def test_a_canceled_deployment_cancels_its_request(world):
    stack, gl, _ = world
    rid = send(stack, blocked(gl, 504)).json()["request"]
    stack.message_ts(rid)
    canceled = deployment_event(
        base=gl.url,
        status="canceled",
        project_path=PROJECT,
        project_id=PROJECT_ID,
        deployment_id=504,
        job_id=5040,
        environment="production",
        sha=SHA,
    )
    gl.cancel(PROJECT_ID, 504)
    assert send(stack, canceled).status_code == 200
    wait_until(lambda: redis_of(stack).hget(f"jit:req:{rid}", "status") == "cancelled", message="cancelled")
    assert gl.decided(504) == []


def test_a_canceled_event_gitlab_does_not_confirm_changes_nothing(world):
    """One webhook token serves every hooked project, so whoever set up a hook anywhere can send a
    `canceled` event for any deployment id: its word is not taken, GitLab is asked."""
    stack, gl, _ = world
    rid = send(stack, blocked(gl, 505)).json()["request"]
    stack.message_ts(rid)
    forged = deployment_event(
        base=gl.url,
        status="canceled",
        project_path=PROJECT,
        project_id=PROJECT_ID,
        deployment_id=505,
        job_id=5050,
        environment="production",
        sha=SHA,
    )
    reply = send(stack, forged)
    assert reply.status_code == 200 and reply.json()["result"] == "ignored", reply.text
    assert redis_of(stack).hget(f"jit:req:{rid}", "status") == "pending"
    # the gate is still owed its decision: the approvers' clicks reach GitLab as before
    click(stack, rid, "U0LEAD1")
    wait_until(lambda: len(stored_approvals(redis_of(stack), rid)) == 1, message="first approval")
    click(stack, rid, "U0LEAD2")
    approval = wait_until(lambda: gl.decided(505), message="GitLab hears the decision")[0]
    assert approval.body["status"] == "approved"


def test_a_branch_named_like_a_full_ref_is_never_that_ref(world):
    """GitLab names a deployment's ref by its short name: a branch literally named
    `refs/heads/main` must not pass for main (auto_approve rules match `ref`)."""
    stack, gl, _ = world
    payload = blocked(gl, 506)
    gl.deployments[(PROJECT_ID, 506)]["ref"] = "refs/heads/main"
    rid = send(stack, payload).json()["request"]
    assert redis_of(stack).hget(f"jit:req:{rid}", "status") == "pending"
    context = json.loads(redis_of(stack).hget(f"jit:req:{rid}", "context"))
    assert context["ref"] == "refs/heads/refs/heads/main"


def test_policy_check_says_when_the_gitlab_instance_has_no_approvals_api(tmp_path):
    issuers = Issuers()
    policy = tmp_path / "jit-policy.yaml"
    policy.write_text(gate_policy(issuers.gitlab))
    try:
        for version, warned in (("17.5.1-ee", False), ("17.5.1", True), ("14.6.0-ee", True)):
            with GitLabFake(version=version) as gl:
                env = {"PATH": "/usr/bin:/bin", "GITLAB_URL": gl.url, "GITLAB_API_TOKEN": gl.token}
                out = subprocess.run(
                    [*JIT, "policy", "check", str(policy)],
                    capture_output=True,
                    text=True,
                    env={**env, "PYTHONPATH": str(ROOT)},
                    cwd=str(ROOT),
                    timeout=60,
                )
            assert out.returncode == 0, out.stdout + out.stderr
            assert ("no deployment approvals API" in out.stdout) is warned, (version, out.stdout)
    finally:
        issuers.close()
