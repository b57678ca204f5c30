"""A GitHub deployment waits, without a runner, until approvers click in Slack; then only that run's job
collects its credential. Real processes (redis-server, `jit serve`, `jit worker`), GitHub's and
Slack's wire formats from the test servers, OIDC tokens from a local issuer."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest
import redis as redislib
import requests
from fakes.github import GitHubFake, delivery, sign, workflow_run
from fakes.slack import block_action, view_submission
from procs import JIT, Stack, wait_until
from redis_state import stored_approvals
from support import GRANT_SCRIPT, SECRET_KEY
from test_oidc import Issuers, github_claims, mint

from bot.core.crypto import RequestTokens

SECRET = "github-webhook-secret-0123456789"
REPO, REPO_ID, INSTALLATION = "acme/web", 1296269, 77
SHA = "6dcb09b5b57875f334f61aebed695e2e4193db5e"
OTHER_SHA = "c040cae0f0dc81641728557b80f09cfa23b83fe5"


def gate_policy(issuer: str) -> str:
    return f"""\
defaults:
  channel: C0APPROVALS
  pending_timeout: 30m
people:
  alice: U0ALICE
pipelines:
  web-production:
    github: {{repository: {REPO}, environment: production}}
    oidc:
      issuer: {issuer}
      audience: jit-bot
      claims: {{repository: {REPO}, environment: production}}
    actions: [deploy-prod]
  web-staging:
    github: {{repository: {REPO}, environment: staging}}
    oidc:
      issuer: {issuer}
      audience: jit-bot
      claims: {{repository: {REPO}, environment: staging}}
    actions: [deploy-staging]
actions:
  deploy-prod:
    description: Deploy acme/web to production
    approvers: [U0LEAD1, U0LEAD2, U0ALICE]
    approvals_required: 2
    ttl: {{default: 10m, max: 1h}}
    grant:
      type: exec
      grant_command: ["{sys.executable}", "{GRANT_SCRIPT}", "grant"]
      revoke_command: ["{sys.executable}", "{GRANT_SCRIPT}", "revoke"]
      env_passthrough: [JIT_TEST_STATE]
  deploy-staging:
    description: Deploy acme/web to staging
    approvers: [U0LEAD1]
    pending_timeout: 3s
    grant:
      type: token
      audience: web-staging
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    issuers = Issuers()
    gh = GitHubFake().start()
    gh.install(INSTALLATION, REPO, "acme/other")
    key = gh.write_private_key(tmp_path_factory.mktemp("github") / "app.pem")
    env = {
        "GITHUB_APP_ID": gh.app_id,
        "GITHUB_APP_PRIVATE_KEY_FILE": str(key),
        "GITHUB_WEBHOOK_SECRET": SECRET,
        "GITHUB_API_URL": gh.api_url,
    }
    stack = Stack(policy=gate_policy(issuers.github), extra_env=env)
    try:
        stack.serve()
        stack.worker()
        yield stack, gh, issuers
    finally:
        stack.close()
        gh.stop()
        issuers.close()


def deliver(stack: Stack, gh: GitHubFake, event: str, payload: dict, guid: str | None = None, secret: str = SECRET):
    body, headers = delivery(secret, event, payload, app_id=gh.app_id, guid=guid)
    return requests.post(stack.url + "/github/webhook", data=body, headers=headers, timeout=15)


def deploy(gh: GitHubFake, run_id: int, environment: str = "production", sender: str = "octocat", **kw) -> dict:
    return gh.deployment(
        full_name=kw.pop("full_name", REPO),
        repo_id=REPO_ID,
        installation_id=kw.pop("installation_id", INSTALLATION),
        run_id=run_id,
        environment=environment,
        sha=SHA,
        deployment_id=kw.pop("deployment_id", run_id * 10 + 1),
        sender=sender,
        **kw,
    )


def run_token(issuers: Issuers, run_id: int, attempt: str = "1", environment: str = "production", sha: str = SHA):
    """The OIDC token GitHub Actions mints for a job of that run (claims as documented)."""
    return mint(
        github_claims(
            issuers.github,
            repository=REPO,
            repository_id=str(REPO_ID),
            run_id=str(run_id),
            run_attempt=attempt,
            environment=environment,
            sha=sha,
            sub=f"repo:{REPO}:environment:{environment}",
        )
    )


def ask_with(stack: Stack, token: str, action: str = "deploy-prod") -> requests.Response:
    return requests.post(
        stack.url + "/v1/requests",
        json={"action": action, "reason": "the deploy job runs"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=15,
    )


def click(stack: Stack, rid: str, user: str, action: str = "jit_approve", **kw) -> requests.Response:
    ts = stack.message_ts(rid)
    return stack.slack_post(block_action(action, rid, user, channel="C0APPROVALS", message_ts=ts, **kw))


def redis_of(stack: Stack) -> redislib.Redis:
    return redislib.Redis.from_url(stack.redis.url, decode_responses=True)


def audit_events(stack: Stack, rid: str) -> list[dict]:
    out = []
    for _, fields in redis_of(stack).xrange("jit:audit"):
        for value in fields.values():
            if rid in value:
                try:
                    out.append(json.loads(value))
                except ValueError:
                    pass
    return out


def message_text(stack: Stack, rid: str) -> str:
    return json.dumps(stack.slack.message(stack.message_ts(rid))["blocks"])


def requests_count(stack: Stack) -> int:
    return redis_of(stack).zcard("jit:idx:all")


# ---------------------------------------------------------------------------------------- the promise


def test_two_slack_approvals_release_the_deployment_and_only_its_run_collects_the_credential(world):
    stack, gh, issuers = world
    resp = deliver(stack, gh, "deployment_protection_rule", deploy(gh, 1001))
    assert resp.status_code == 202, resp.text
    rid = resp.json()["request"]

    # the Slack message is up, naming what waits
    text = message_text(stack, rid)
    assert "acme/web" in text and "production" in text and "Approve" in text

    assert click(stack, rid, "U0LEAD1").status_code == 200
    wait_until(lambda: len(stored_approvals(redis_of(stack), rid)) == 1, message="first approval")
    assert gh.reviews(1001) == []  # one approval of two: GitHub still waits
    assert click(stack, rid, "U0LEAD2").status_code == 200

    review = wait_until(lambda: gh.reviews(1001), message="GitHub hears the decision")[0]
    assert review.body["environment_name"] == "production" and review.body["state"] == "approved"
    assert "U0LEAD1" in review.body["comment"] and "U0LEAD2" in review.body["comment"]
    # the app authenticated as GitHub requires: a short RS256 JWT issued by the app, then an installation token
    exchanges = [t for t in gh.token_requests if t["claims"]]
    assert exchanges and all(t["claims"]["iss"] == gh.app_id for t in exchanges)
    assert review.token.startswith("ghs_")

    # the job runs now: its OIDC token collects the credential of the approved deployment, no second approval
    before = requests_count(stack)
    mine = ask_with(stack, run_token(issuers, 1001))
    assert mine.status_code == 200, mine.text
    assert mine.json()["id"] == rid
    rtok = mine.json()["request_token"]
    # the request's own token, made from the id with the stack's JIT_SECRET_KEY; the job asking
    # again (a retried step) gets the very same one
    assert rtok == RequestTokens(SECRET_KEY).token(rid)
    assert ask_with(stack, run_token(issuers, 1001)).json()["request_token"] == rtok
    assert stack.wait_status(rid, rtok, {"active"})["status"] == "active"
    cred = stack.get(rid, rtok, path="/credential")
    assert cred.status_code == 200 and cred.json()["credential"]
    bound = [e for e in audit_events(stack, rid) if e.get("event") == "gate.bound"]
    assert bound and bound[0]["details"]["run"]["run_id"] == "1001"

    # any other run, attempt or commit is refused, and asks for nothing new
    for other in (
        run_token(issuers, 1002),
        run_token(issuers, 1001, attempt="2"),
        run_token(issuers, 1001, sha=OTHER_SHA),
    ):
        refused = ask_with(stack, other)
        assert refused.status_code == 403, refused.text
    # a job of the same run deploying elsewhere may not read this request either
    staging = run_token(issuers, 1001, environment="staging")
    assert stack.get(rid, staging, path="/credential").status_code == 404
    assert requests_count(stack) == before
    refused = [e["details"]["why"] for e in audit_events(stack, rid) if e.get("event") == "gate.bound.refused"]
    assert any("commit is not the approved deployment's" in why for why in refused), refused


def test_deny_rejects_the_deployment_with_the_reason(world):
    stack, gh, _ = world
    rid = deliver(stack, gh, "deployment_protection_rule", deploy(gh, 1101)).json()["request"]
    trigger = "1101.42.abc"
    assert click(stack, rid, "U0LEAD1", "jit_deny", trigger_id=trigger, button_text="Deny").status_code == 200
    opened = wait_until(
        lambda: [c for c in stack.slack.calls("views.open") if c.params.get("trigger_id") == trigger],
        message="the deny modal",
    )
    view = opened[0].params["view"]
    submitted = stack.slack_post(
        view_submission(
            view["callback_id"],
            view["private_metadata"],
            {"reason": {"reason_input": "not during the freeze"}},
            "U0LEAD1",
        )
    )
    assert submitted.status_code == 200
    review = wait_until(lambda: gh.reviews(1101), message="GitHub hears the denial")[0]
    assert review.body["state"] == "rejected"
    assert "not during the freeze" in review.body["comment"]


def test_the_user_who_triggered_the_deployment_cannot_approve_it(world):
    stack, gh, _ = world
    rid = deliver(stack, gh, "deployment_protection_rule", deploy(gh, 1201, sender="alice")).json()["request"]
    assert click(stack, rid, "U0ALICE").status_code == 200
    wait_until(
        lambda: any(
            e.get("event") == "approval.refused" and e.get("actor") == "U0ALICE" for e in audit_events(stack, rid)
        ),
        message="the self-approval is refused",
    )
    assert len(stored_approvals(redis_of(stack), rid)) == 0
    assert gh.attempts(1201) == []


def test_nobody_deciding_in_time_rejects_the_deployment(world):
    stack, gh, _ = world
    rid = deliver(stack, gh, "deployment_protection_rule", deploy(gh, 1301, environment="staging")).json()["request"]
    review = wait_until(lambda: gh.reviews(1301), timeout=30, message="the timeout reaches GitHub")[0]
    assert review.body["state"] == "rejected" and review.body["environment_name"] == "staging"
    assert "decided in time" in review.body["comment"]
    assert redis_of(stack).hget(f"jit:req:{rid}", "status") == "timed_out"


def test_a_callback_failing_twice_is_retried_until_github_takes_it(world):
    stack, gh, _ = world
    rid = deliver(stack, gh, "deployment_protection_rule", deploy(gh, 1401, environment="staging")).json()["request"]
    gh.fail_callbacks(502, 502)
    assert click(stack, rid, "U0LEAD1").status_code == 200
    review = wait_until(lambda: gh.reviews(1401), timeout=30, message="the third attempt lands")[0]
    assert review.body["state"] == "approved"
    assert [c.status for c in gh.attempts(1401)] == [502, 502, 204]
    # the message showed the failures while retrying, and shows the outcome now
    updates = [json.dumps(c.params.get("blocks")) for c in stack.slack.calls("chat.update")]
    wait_until(lambda: "GitHub was told" in message_text(stack, rid), message="the message shows GitHub took it")
    assert "after 3 attempts" in message_text(stack, rid)
    assert any("HTTP 502" in u for u in updates + [message_text(stack, rid)])


def test_a_cancelled_run_cancels_its_request(world):
    stack, gh, _ = world
    rid = deliver(stack, gh, "deployment_protection_rule", deploy(gh, 1501)).json()["request"]
    stack.message_ts(rid)
    payload = workflow_run(
        api=gh.api_url, full_name=REPO, repo_id=REPO_ID, installation_id=INSTALLATION, run_id=1501, sha=SHA
    )
    assert deliver(stack, gh, "workflow_run", payload).status_code == 200
    wait_until(lambda: redis_of(stack).hget(f"jit:req:{rid}", "status") == "cancelled", message="cancelled")
    wait_until(lambda: "Cancelled" in message_text(stack, rid), message="the message shows it")
    assert gh.attempts(1501) == []  # a cancelled run waits for nobody


def test_a_deployment_no_policy_entry_names_is_rejected_with_why(world):
    stack, gh, _ = world
    before = requests_count(stack)
    resp = deliver(stack, gh, "deployment_protection_rule", deploy(gh, 1601, full_name="acme/other"))
    assert resp.status_code == 202, resp.text
    review = wait_until(lambda: gh.reviews(1601), message="the rejection")[0]
    assert review.body["state"] == "rejected"
    assert "acme/other" in review.body["comment"] and "policy" in review.body["comment"]
    assert requests_count(stack) == before


def test_bad_deliveries_get_a_4xx_and_create_nothing(world):
    stack, gh, _ = world
    before = requests_count(stack)
    gates = len(redis_of(stack).keys("jit:gate:g?-*"))

    forged = deliver(stack, gh, "deployment_protection_rule", deploy(gh, 1701), secret="not-the-secret")
    assert forged.status_code == 401

    guid = str(uuid.uuid4())
    first = deliver(stack, gh, "deployment_protection_rule", deploy(gh, 1702), guid=guid)
    assert first.status_code == 202
    created = requests_count(stack)
    gates = len(redis_of(stack).keys("jit:gate:g?-*"))
    replayed = deliver(stack, gh, "deployment_protection_rule", deploy(gh, 1702), guid=guid)
    assert replayed.status_code == 409

    stranger = deliver(stack, gh, "deployment_protection_rule", deploy(gh, 1703, installation_id=4242))
    assert stranger.status_code == 403 and stranger.json()["error"] == "unknown_installation"

    body, headers = delivery(SECRET, "deployment_protection_rule", deploy(gh, 1704), app_id=gh.app_id)
    padded = body[:-1] + b',"padding":"' + b"x" * (2 * 1024 * 1024) + b'"}'
    headers["X-Hub-Signature-256"] = sign(SECRET, padded)
    huge = requests.post(stack.url + "/github/webhook", data=padded, headers=headers, timeout=15)
    assert huge.status_code == 413

    assert requests_count(stack) == created == before + 1
    assert len(redis_of(stack).keys("jit:gate:g?-*")) == gates
    assert gh.attempts(1701) == gh.attempts(1703) == gh.attempts(1704) == []


def test_events_jit_does_not_handle_get_a_2xx(world):
    stack, gh, _ = world
    assert deliver(stack, gh, "ping", {"zen": "Design for failure.", "hook_id": 447638302}).status_code == 200


def test_the_job_runs_jit_request_and_gets_its_credential_without_asking_anyone(world):
    """The workflow of docs/gates.md: the deployment waits, two approvers click, the job's step runs
    `jit request --oidc github` and gets the credential at once."""
    stack, gh, issuers = world
    rid = deliver(stack, gh, "deployment_protection_rule", deploy(gh, 1801)).json()["request"]
    click(stack, rid, "U0LEAD1")
    wait_until(lambda: len(stored_approvals(redis_of(stack), rid)) == 1, message="first approval")
    click(stack, rid, "U0LEAD2")
    wait_until(lambda: gh.reviews(1801), message="GitHub releases the job")
    before = requests_count(stack)

    job_env = {
        "PATH": "/usr/bin:/bin",
        "GITHUB_ACTIONS": "true",
        "GITHUB_REPOSITORY": REPO,
        "GITHUB_RUN_ID": "1801",
        "GITHUB_RUN_ATTEMPT": "1",
        "GITHUB_JOB": "deploy",
        **gh.job_token_endpoint(run_token(issuers, 1801)),
    }
    step = subprocess.run(
        [
            *JIT,
            "request",
            "deploy-prod",
            "--reason",
            "deploy",
            "--oidc",
            "github",
            "--format",
            "json",
            "--url",
            stack.url,
        ],
        env=job_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert step.returncode == 0, step.stderr
    assert json.loads(step.stdout)["credential"]
    assert rid in step.stderr and "found again" in step.stderr
    assert requests_count(stack) == before  # nobody was asked again


def test_two_jobs_of_one_run_deploying_to_one_environment_share_one_request(world):
    """GitHub approves a run's environment once, releasing every job of the run waiting on it: so
    jit asks once, tells GitHub once, and each job collects the one approved request (attack
    review: a second request made the first job's ask fail, and denying it meant nothing)."""
    stack, gh, issuers = world
    first = deliver(stack, gh, "deployment_protection_rule", deploy(gh, 4701))
    second = deliver(stack, gh, "deployment_protection_rule", deploy(gh, 4701, deployment_id=47012))
    assert first.status_code == 202 and second.status_code in (200, 202), (first.text, second.text)
    rid = first.json()["request"]
    assert second.json()["request"] == rid
    click(stack, rid, "U0LEAD1")
    wait_until(lambda: len(stored_approvals(redis_of(stack), rid)) == 1, message="first approval")
    click(stack, rid, "U0LEAD2")
    wait_until(lambda: gh.reviews(4701), message="GitHub hears the decision")
    mine = ask_with(stack, run_token(issuers, 4701))
    assert mine.status_code == 200 and mine.json()["id"] == rid, mine.text

    def gates_of_request() -> list[dict]:
        r = redis_of(stack)
        found = (r.hgetall(k) for k in r.scan_iter("jit:gate:gh-*"))
        return [g for g in found if g.get("request_id") == rid]

    settled = wait_until(
        lambda: (gs := gates_of_request()) and len(gs) == 2 and all(g.get("told") for g in gs) and gs,
        message="both deployments' gates settle",
    )
    assert sorted(g["told"] for g in settled) == ["approved", "approved"]
    assert [c.status for c in gh.attempts(4701)] == [204]  # GitHub approves a run's environment once
    assert not [e for e in audit_events(stack, rid) if e.get("event") == "gate.refused"]
