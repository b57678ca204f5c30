"""Extend, warn, release and overlap end to end: real `jit serve` and `jit worker` processes, redis-server,
the `jit extend` command, and Slack's signed payloads."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime

import pytest
import requests
from extend_support import with_extend
from fakes.slack import block_action
from procs import JIT, Stack, wait_until
from support import WEB_TOKEN, policy_text

from bot.decision.slack.views.blocks import EXTEND, RELEASE


@pytest.fixture(scope="module")
def stack():
    with Stack(extra_env={"JIT_RATE_LIMIT": "0", "JIT_WARN_BEFORE": "600"}) as s:
        text = policy_text(str(s.state_dir))
        text = with_extend(text, "quick", "{max_total: 1m}")
        text = with_extend(text, "read-secret", "{max_total: 30m}")
        text = with_extend(text, "deploy-prod", "{max_total: 1h, approvals_required: 1}")
        s.policy_file.write_text(text)
        s.serve()
        s.worker()
        yield s


def at(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def active(stack, action, approvers, **body):
    r = stack.ask(action, WEB_TOKEN, **body)
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    ts = stack.message_ts(rid)
    for user in approvers:
        resp = stack.slack_post(block_action("jit_approve", rid, user, channel="C0APPROVALS", message_ts=ts))
        assert resp.status_code == 200
    return rid, stack.wait_status(rid, WEB_TOKEN, {"active"})


def buttons(blocks) -> dict[str, str]:
    return {
        e["action_id"]: e["text"]["text"]
        for b in blocks or []
        if b["type"] == "actions"
        for e in b["elements"]
        if e["type"] == "button"
    }


def test_an_extension_within_policy_moves_the_revocation(stack):
    rid, body = active(stack, "quick", ["U0LEAD1"], ttl="3s")
    env = {**stack.env, "JIT_URL": stack.url, "JIT_REQUEST_TOKEN": stack.follow_token(rid, WEB_TOKEN)}
    done = subprocess.run(
        [*JIT, "extend", rid, "--ttl", "5s", "--reason", "one more table"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "extended" in done.stderr
    now = stack.get(rid, WEB_TOKEN).json()
    assert at(now["expires_at"]) - at(body["expires_at"]) == pytest.approx(5, abs=0.01)
    ended = stack.wait_status(rid, WEB_TOKEN, {"expired"}, timeout=60)
    revokes = (stack.state_dir / f"{rid}.revoke").read_text().splitlines()
    assert len(revokes) == 1
    assert json.loads(revokes[0])["at"] >= at(ended["expires_at"])  # never before the promised end
    assert ended["expires_at"] == now["expires_at"]


def test_an_extension_that_needs_approval(stack):
    rid, body = active(stack, "deploy-prod", ["U0LEAD1", "U0LEAD2"])
    url = f"{stack.url}/v1/requests/{rid}/extend"
    auth = {"Authorization": f"Bearer {stack.follow_token(rid, WEB_TOKEN)}"}
    resp = requests.post(url, json={"ttl": "10m", "reason": "the canary needs watching"}, headers=auth, timeout=10)
    assert resp.status_code == 202, resp.text
    assert resp.json()["expires_at"] == body["expires_at"]
    ts = stack.message_ts(rid)
    msg = wait_until(
        lambda: "Extension requested" in json.dumps(stack.slack.message(ts).get("blocks")) and stack.slack.message(ts),
        message="the extension on the message",
    )
    assert "jit_approve" in buttons(msg["blocks"])
    click = block_action("jit_approve", rid, "U0LEAD3", channel="C0PROD", message_ts=ts)
    assert stack.slack_post(click).status_code == 200
    moved = wait_until(
        lambda: (b := stack.get(rid, WEB_TOKEN).json())["expires_at"] != body["expires_at"] and b,
        message="the new expiry",
    )
    assert at(moved["expires_at"]) - at(body["expires_at"]) == pytest.approx(600, abs=0.01)
    assert requests.delete(f"{stack.url}/v1/requests/{rid}", headers=auth, timeout=10).status_code == 200


def test_the_warning_has_buttons_and_release_now_ends_the_grant(stack):
    rid, _ = active(stack, "read-secret", ["U0LEAD1"], ttl=603, requested_by="alice")  # warned 3 s in
    ts = stack.message_ts(rid)
    warning = wait_until(
        lambda: next(
            (c for c in stack.slack.calls("chat.postMessage") if c.ok and c.params.get("thread_ts") == ts), None
        ),
        message="the warning in the thread",
    )
    assert "expires in 10 min" in warning.params["text"]
    blocks = warning.params["blocks"]
    blocks = json.loads(blocks) if isinstance(blocks, str) else blocks
    assert buttons(blocks) == {EXTEND: "Extend", RELEASE: "Release"}
    warn_ts = warning.response["ts"]
    message = stack.slack.message(warn_ts)
    forged = block_action(
        RELEASE, rid, "U0ALICE", channel="C0APPROVALS", message_ts="1.000001", button_text="Release now"
    )
    assert stack.slack_post(forged).status_code == 400  # a button names only the request of its own message
    click = block_action(
        RELEASE, rid, "U0ALICE", channel="C0APPROVALS", message_ts=warn_ts, message=message, button_text="Release"
    )
    assert stack.slack_post(click).status_code == 200  # clicked in the warning itself
    ended = stack.wait_status(rid, WEB_TOKEN, {"revoked"})
    assert ended["revoked_by"] == "U0ALICE"
    assert stack.get(rid, WEB_TOKEN, path="/credential").status_code == 410


def test_the_same_pipeline_asking_again_gets_its_grant_back(stack):
    rid, _ = active(stack, "quick", ["U0LEAD1"], ttl="30s")
    again = stack.ask("quick", WEB_TOKEN, ttl="30s", reason="the next step")
    assert again.status_code == 200 and again.json()["id"] == rid and again.json()["status"] == "active"
    assert len((stack.state_dir / f"{rid}.grant").read_text().splitlines()) == 1  # one credential issued
