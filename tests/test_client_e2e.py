"""`jit request` / `jit release` against a real server and worker: every exit code, retries, formats."""

from __future__ import annotations

import io
import json
import threading
import time

import pytest
from fakes.slack import block_action, view_submission
from procs import Stack, wait_until
from support import WEB_TOKEN

from bot import client


@pytest.fixture(scope="module")
def stack():
    with Stack(extra_env={"JIT_RATE_LIMIT": "0"}) as s:
        s.serve()
        s.worker()
        yield s


def run_client(stack, argv, env=None):
    out, err = io.StringIO(), io.StringIO()
    env = {"JIT_URL": stack.url, "JIT_TOKEN": WEB_TOKEN, **(env or {})}
    code = client.main(argv, env=env, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def in_background(stack, argv, env=None):
    result = {}

    def go():
        result["value"] = run_client(stack, argv, env)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t, result


def newest_request(stack, before: set[str]) -> str:
    import redis

    r = redis.Redis.from_url(stack.redis.url, decode_responses=True)

    def find():
        ids = set(r.zrange("jit:idx:all", 0, -1)) - before
        return next(iter(ids)) if ids else None

    return wait_until(find, message="the client's request")


def known_ids(stack) -> set[str]:
    import redis

    return set(redis.Redis.from_url(stack.redis.url, decode_responses=True).zrange("jit:idx:all", 0, -1))


def test_granted_prints_env_and_exits_0(stack):
    before = known_ids(stack)
    t, res = in_background(stack, ["request", "quick", "--reason", "ship it", "--ttl", "30s", "--format", "env", "--quiet"])
    rid = newest_request(stack, before)
    ts = stack.message_ts(rid)
    stack.slack_post(block_action("jit_approve", rid, "U0LEAD1", channel="C0APPROVALS", message_ts=ts))
    t.join(60)
    code, out, err = res["value"]
    assert code == 0, err
    assert f"export JIT_REQUEST_ID={rid}" in out and "export JIT_USERNAME=" in out
    assert "s3cr3t" not in err  # secrets go to stdout only
    rtoken = next(line.split("=", 1)[1] for line in out.splitlines() if line.startswith("export JIT_REQUEST_TOKEN="))
    code, _, _ = run_client(stack, ["release", rid, "--request-token", rtoken.strip("'"), "--quiet"], env={"JIT_TOKEN": ""})
    assert code == 0
    assert stack.get(rid, WEB_TOKEN).json()["status"] == "revoked"


def test_denied_exits_10_with_who_and_why(stack):
    before = known_ids(stack)
    t, res = in_background(stack, ["request", "deploy-prod", "--reason", "hotfix"])
    rid = newest_request(stack, before)
    ts = stack.message_ts(rid)
    stack.slack_post(block_action("jit_deny", rid, "U0LEAD2", channel="C0PROD", message_ts=ts, trigger_id="1.2.3"))
    call = stack.slack.wait_for(lambda c: c.method == "views.open" and rid in json.dumps(c.params), timeout=20)
    view = call.params["view"]
    stack.slack_post(view_submission(view["callback_id"], view["private_metadata"],
                                     {"reason": {"reason_input": "freeze until monday"}}, "U0LEAD2"))
    t.join(60)
    code, _, err = res["value"]
    assert code == 10
    assert "U0LEAD2" in err and "freeze until monday" in err


def test_client_timeout_exits_11_and_cancels(stack):
    before = known_ids(stack)
    code, _, _ = run_client(stack, ["request", "deploy-prod", "--reason", "slow", "--timeout", "2s", "--quiet"])
    assert code == 11
    rid = newest_request(stack, before)
    assert stack.get(rid, WEB_TOKEN).json()["status"] == "cancelled"


def test_cancelled_elsewhere_exits_12(stack):
    import requests

    before = known_ids(stack)
    t, res = in_background(stack, ["request", "deploy-prod", "--reason", "x", "--quiet"])
    rid = newest_request(stack, before)
    requests.delete(f"{stack.url}/v1/requests/{rid}", headers={"Authorization": f"Bearer {WEB_TOKEN}"}, timeout=10)
    t.join(60)
    assert res["value"][0] == 12


def test_usage_and_server_errors(stack):
    assert run_client(stack, ["request", "quick"])[0] == 2  # --reason missing
    code, _, err = run_client(stack, ["request", "no-such-action", "--reason", "x", "--quiet"])
    assert code == 1 and "unknown action" in err


def test_retried_step_does_not_ask_twice_and_github_format(stack, tmp_path):
    gh_env = tmp_path / "github_env"
    env = {"GITHUB_ACTIONS": "true", "GITHUB_REPOSITORY": "acme/web", "GITHUB_RUN_ID": "777", "GITHUB_RUN_ATTEMPT": "1",
           "GITHUB_JOB": "deploy", "GITHUB_ENV": str(gh_env), "GITHUB_SHA": "abc", "GITHUB_REF": "refs/heads/main"}
    before = known_ids(stack)
    first = run_client(stack, ["request", "quick", "--reason", "r", "--no-wait", "--quiet"], env)
    assert first[0] == 0
    rid = newest_request(stack, before)
    t, res = in_background(stack, ["request", "quick", "--reason", "r", "--format", "github", "--quiet"], env)
    ts = stack.message_ts(rid)
    stack.slack_post(block_action("jit_approve", rid, "U0LEAD1", channel="C0APPROVALS", message_ts=ts))
    t.join(60)
    code, out, _ = res["value"]
    assert code == 0
    assert known_ids(stack) - before == {rid}  # the retried step found the same request
    posts = [c for c in stack.slack.calls("chat.postMessage") if rid in json.dumps(c.params)]
    assert len(posts) == 1
    written = gh_env.read_text()
    password = f"pw-{rid}-s3cr3t"
    assert f"::add-mask::{password}" in out
    assert password in written and f"JIT_REQUEST_ID={rid}" in written
    assert password not in out.replace(f"::add-mask::{password}", "")


def test_long_poll_answers_as_soon_as_status_changes(stack):
    r = stack.ask("quick", WEB_TOKEN, ttl="30s")
    rid = r.json()["id"]
    ts = stack.message_ts(rid)
    started = {}

    def approve_soon():
        time.sleep(1.0)
        started["t"] = time.time()
        stack.slack_post(block_action("jit_approve", rid, "U0LEAD1", channel="C0APPROVALS", message_ts=ts))

    threading.Thread(target=approve_soon, daemon=True).start()
    t0 = time.time()
    body = stack.get(rid, WEB_TOKEN, wait=30).json()
    assert body["status"] in ("approved", "active")
    assert time.time() - t0 < 25  # woken by the change, not by the 30 s deadline
