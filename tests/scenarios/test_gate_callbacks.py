"""What GitHub hears about a deployment it holds, step by step in one process (jobs run by the test):
failures shown while retrying, refusals, the watchdog, and the policy rules that decide without a click."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from fakes.github import GitHubFake, delivery
from test_gates_github import INSTALLATION, REPO, REPO_ID, SECRET, SHA, gate_policy
from test_oidc import Issuers

from bot.core.clock import now_ms
from bot.settings import load_settings
from bot.store import keys
from bot.store.due import DueQueue
from bot.store.gates import GateStore
from bot.web.app import create_app
from bot.wiring import build
from workers.jobs import gate as gate_job
from workers.jobs import run_due
from workers.jobs.gate import tell
from workers.queue.retry import RetryLater


@pytest.fixture
def gh():
    with GitHubFake() as fake:
        fake.install(INSTALLATION, REPO)
        yield fake


@pytest.fixture
def issuers():
    i = Issuers()
    yield i
    i.close()


@pytest.fixture
def gated(gh, issuers, jit_env, policy_file, monkeypatch, tmp_path):
    """The app wired to the GitHub test server, with the gate policy of the process tests (its 3 s
    staging timeout, there to test timeouts, made long: a busy machine must not time these out)."""
    policy_file.write_text(gate_policy(issuers.github).replace("pending_timeout: 3s", "pending_timeout: 10m"))
    key = gh.write_private_key(tmp_path / "app.pem")
    for name, value in {
        "GITHUB_APP_ID": gh.app_id,
        "GITHUB_APP_PRIVATE_KEY_FILE": str(key),
        "GITHUB_WEBHOOK_SECRET": SECRET,
        "GITHUB_API_URL": gh.api_url,
    }.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def app_jit(gated, jit):
    return jit


def hold(jit, gh, run_id: int, environment: str = "production") -> dict:
    payload = gh.deployment(
        full_name=REPO,
        repo_id=REPO_ID,
        installation_id=INSTALLATION,
        run_id=run_id,
        environment=environment,
        sha=SHA,
        deployment_id=run_id * 10 + 1,
    )
    body, headers = delivery(SECRET, "deployment_protection_rule", payload, app_id=gh.app_id)
    resp = jit.http.post("/github/webhook", data=body, headers=headers)
    assert resp.status_code in (200, 202), resp.get_json()
    return resp.get_json()


def message(jit, slack, rid: str) -> str:
    return json.dumps(slack.message(jit.rt.store.get(rid).message_ts)["blocks"])


def gate_of(jit, rid: str):
    return GateStore(jit.rt.redis, jit.rt.settings.jit_request_retention).of_request(rid)


def test_the_message_shows_a_failed_callback_while_jit_retries(app_jit, gh, slack):
    jit = app_jit
    rid = hold(jit, gh, 2001, "staging")["request"]
    jit.work()
    assert "holds the deployment" in message(jit, slack, rid)
    gh.fail_all_callbacks(503)
    jit.approve(rid, "U0LEAD1")
    jit.drain(lambda: gh.attempts(2001), what="the first attempt")  # grant, then the callback: it fails
    # message updates are paced per message: the failure shows at the next allowed update
    shown = jit.drain(
        lambda: (m := message(jit, slack, rid)) and "has not heard the decision" in m and m, what="the failure shows"
    )
    assert "HTTP 503" in shown and "keeps retrying" in shown
    gh.clear_faults()
    jit.drain(lambda: gh.reviews(2001), what="a retry lands")
    statuses = [c.status for c in gh.attempts(2001)]
    assert statuses[-1] == 204 and set(statuses[:-1]) == {503}
    jit.drain(lambda: "GitHub was told" in message(jit, slack, rid), what="the message follows")
    assert gate_of(jit, rid).told == "approved"


def test_a_refusal_of_githubs_own_is_shown_and_audited_not_retried_forever(app_jit, gh, slack):
    jit = app_jit
    rid = hold(jit, gh, 2101, "staging")["request"]
    gh.fail_callbacks(422)
    jit.approve(rid, "U0LEAD1")
    jit.drain(lambda: gate_of(jit, rid).gave_up, what="GitHub's refusal is taken")
    jit.work()
    assert [c.status for c in gh.attempts(2101)] == [422]
    assert "refused jit's answer" in message(jit, slack, rid)
    jit.rt.audit.flush()
    events = [e.body["event"] for e in jit.rt.audit.entries_for_request(rid)]
    assert "gate.refused" in events


def test_a_lost_answer_then_a_refusal_counts_as_delivered(app_jit, gh):
    """The first attempt landed but its answer was lost (jit cannot know); GitHub then refuses the
    second as decided already: the gate is told, not given up."""
    jit = app_jit
    rid = hold(jit, gh, 2201, "staging")["request"]
    gates = GateStore(jit.rt.redis, jit.rt.settings.jit_request_retention)
    gid = gate_of(jit, rid).id
    gates.attempt_failed(gid, "cannot reach GitHub: ReadTimeout", unsure=True)
    gh.fail_callbacks(422)
    jit.approve(rid, "U0LEAD1")
    jit.drain(lambda: gates.get(gid).told, what="the gate settles")
    assert gates.get(gid).told == "approved" and gates.get(gid).gave_up is None


def test_a_job_dying_after_github_took_the_decision_never_leaves_a_false_refusal(app_jit, gh, monkeypatch):
    """Found by the attack review: the job ends (killed, or an error) after GitHub took the
    decision and before jit recorded it; the resend is refused by GitHub as decided already, and
    jit must read that as delivered (it may have landed), not as GitHub's own refusal."""
    jit = app_jit
    rid = hold(jit, gh, 2251, "staging")["request"]
    gates = GateStore(jit.rt.redis, jit.rt.settings.jit_request_retention)
    gid = gate_of(jit, rid).id
    send = gate_job._send
    died = []

    def send_then_die(*args, **kwargs):
        send(*args, **kwargs)
        if not died:
            died.append(True)
            raise RuntimeError("the job died after GitHub took the decision")

    monkeypatch.setattr(gate_job, "_send", send_then_die)
    jit.approve(rid, "U0LEAD1")
    jit.drain(lambda: died, what="the first callback")
    gh.fail_callbacks(422)  # GitHub: this run's environment is decided already
    jit.drain(lambda: gates.get(gid).told or gates.get(gid).gave_up, what="the gate settles")
    assert gates.get(gid).told == "approved" and gates.get(gid).gave_up is None
    assert [c.status for c in gh.attempts(2251)] == [204, 422]


def test_a_deployment_whose_request_was_never_recorded_is_rejected_by_its_watchdog(app_jit, gh):
    """The webhook's process died between recording the deployment and asking for it."""
    jit = app_jit
    gates = GateStore(jit.rt.redis, jit.rt.settings.jit_request_retention)
    gh.deployment(
        full_name=REPO,
        repo_id=REPO_ID,
        installation_id=INSTALLATION,
        run_id=2301,
        environment="production",
        sha=SHA,
        deployment_id=23011,
    )
    callback = f"{gh.api_url}/repos/{REPO}/actions/runs/2301/deployment_protection_rule"
    target = {"installation_id": INSTALLATION, "callback_url": callback, "environment": "production", "run_id": 2301}
    opened = gates.open(
        "gh-1296269-23011",
        platform="github",
        pipeline="web-production",
        place=REPO,
        environment="production",
        target=target,
        binding={},
        now_ms=now_ms() - 61_000,
        watchdog_ms=60_000,
    )
    assert opened
    jit.work()
    review = gh.reviews(2301)[0]
    assert review.body["state"] == "rejected" and "could not record" in review.body["comment"]


def test_the_watchdog_waits_while_the_request_may_still_be_recorded(app_jit, gh):
    jit = app_jit
    gates = GateStore(jit.rt.redis, jit.rt.settings.jit_request_retention)
    gates.open(
        "gh-1296269-23021",
        platform="github",
        pipeline="web-production",
        place=REPO,
        environment="production",
        target={},
        binding={},
        now_ms=now_ms(),
        watchdog_ms=60_000,
    )
    with pytest.raises(RetryLater):
        tell(jit.rt, "gh-1296269-23021", "token")


def test_a_deployment_outside_the_actions_windows_is_rejected_with_when(gated, policy_file, gh, issuers):
    today = datetime.now(UTC).weekday()
    closed = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[(today + 3) % 7]
    text = gate_policy(issuers.github).replace(
        "    approvers: [U0LEAD1]\n    pending_timeout: 3s\n",
        f'    approvers: [U0LEAD1]\n    pending_timeout: 10m\n    windows: ["{closed} 00:00-01:00 UTC"]\n',
    )
    policy_file.write_text(text)
    rt = build(load_settings())
    http = create_app(rt).test_client()
    payload = gh.deployment(
        full_name=REPO,
        repo_id=REPO_ID,
        installation_id=INSTALLATION,
        run_id=2401,
        environment="staging",
        sha=SHA,
        deployment_id=24011,
    )
    body, headers = delivery(SECRET, "deployment_protection_rule", payload, app_id=gh.app_id)
    resp = http.post("/github/webhook", data=body, headers=headers)
    assert resp.status_code == 202 and "change windows" in resp.get_json()["refused"]
    assert rt.redis.zcard(keys.all_requests()) == 0
    run_due(rt, "gate:gh-1296269-24011", _claim(rt, "gate:gh-1296269-24011"))
    review = gh.reviews(2401)[0]
    assert review.body["state"] == "rejected" and "change windows" in review.body["comment"]


def _claim(rt, member: str) -> str:
    claimed = dict(DueQueue(rt.redis).claim(now_ms() + 1))
    return claimed[member]


def test_an_installation_token_is_fetched_once_and_kept_until_shortly_before_it_expires(app_jit, gh):
    jit = app_jit
    rid = hold(jit, gh, 2501, "staging")["request"]
    jit.approve(rid, "U0LEAD1")
    jit.drain(lambda: gh.reviews(2501), what="the callback")
    assert len(gh.token_requests) == 1  # the webhook's token served the callback too
    claims = gh.token_requests[0]["claims"]
    assert claims["iss"] == gh.app_id and claims["exp"] - claims["iat"] <= 600
    key = keys.github_installation_token(str(INSTALLATION))
    assert 3000 < jit.rt.redis.ttl(key) <= 3300  # one hour, less the five-minute margin
    assert gh.reviews(2501)[0].token not in jit.rt.redis.get(key)  # sealed, not in the clear
