"""The grant's buttons in Slack (real signed payloads): Release now, Extend (its modal), Approve on an
extension round, and the expiry warning's Extend and Release buttons."""

from __future__ import annotations

import json
import time

import pytest
from extend_support import with_extend
from fakes.slack import view_submission
from support import WEB_TOKEN, policy_text

from bot.decision.slack.views.blocks import (
    EXTEND,
    EXTEND_REASON_BLOCK,
    EXTEND_REASON_INPUT,
    EXTEND_TTL_BLOCK,
    EXTEND_TTL_INPUT,
    RELEASE,
)


@pytest.fixture
def policy_file(tmp_path, state_dir):
    text = policy_text(str(state_dir))
    text = with_extend(text, "read-secret", "{max_total: 40m}")
    text = with_extend(text, "deploy-prod", "{max_total: 1h, approvals_required: 1}")
    p = tmp_path / "jit-policy.yaml"
    p.write_text(text)
    return p


def until(check, what, jit, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        jit.work()
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def active(jit, action, approvers, **body):
    rid = jit.ask(action, requested_by="alice", **body)["id"]
    for user in approvers:
        jit.approve(rid, user)
    until(lambda: jit.status(rid).get_json()["status"] == "active", "active", jit)
    return rid


def buttons(blocks) -> dict[str, str]:
    """action_id → label of every button in `blocks`."""
    return {
        e["action_id"]: e["text"]["text"]
        for b in blocks
        if b["type"] == "actions"
        for e in b["elements"]
        if e["type"] == "button"
    }


def note_for(slack, user, needle, jit):
    return until(lambda: [e for e in slack.ephemerals(user=user) if needle in e["text"]], f"a note with {needle}", jit)


def open_extend(jit, slack, rid, user):
    trigger = f"{int(time.time())}.{rid}.{user}"
    assert jit.click(EXTEND, rid, user, trigger_id=trigger, button_text="Extend").status_code == 200
    call = slack.wait_for(lambda c: c.method == "views.open" and c.params["trigger_id"] == trigger, timeout=15)
    return call.params["view"]


def submit_extend(jit, view, user, ttl, reason=""):
    values = {EXTEND_TTL_BLOCK: {EXTEND_TTL_INPUT: ttl}, EXTEND_REASON_BLOCK: {EXTEND_REASON_INPUT: reason}}
    return jit.post_slack(view_submission(view["callback_id"], view["private_metadata"], values, user))


def test_the_active_message_has_extend_release_and_revoke(jit, slack):
    rid = active(jit, "read-secret", ["U0LEAD1"])
    jit.work()
    got = buttons(slack.message(jit.rt.store.get(rid).message_ts)["blocks"])
    assert got == {EXTEND: "Extend", RELEASE: "Release now", "jit_revoke": "Revoke now"}
    quick = active(jit, "quick", ["U0LEAD1"], ttl="1m")  # no `extend:`: no Extend button
    jit.work()
    assert EXTEND not in buttons(slack.message(jit.rt.store.get(quick).message_ts)["blocks"])


def test_the_requester_releases_and_a_second_click_changes_nothing(jit, slack):
    rid = active(jit, "deploy-prod", ["U0LEAD1", "U0LEAD2"])
    assert jit.click(RELEASE, rid, "U0ALICE", button_text="Release now").status_code == 200
    body = until(lambda: (b := jit.status(rid).get_json())["status"] == "revoked" and b, "revoked", jit)
    assert body["revoked_by"] == "U0ALICE"
    assert jit.click(RELEASE, rid, "U0LEAD1", button_text="Release now").status_code == 200
    note_for(slack, "U0LEAD1", "already ended", jit)
    until(lambda: len(jit.grants(rid, "revoke")) == 1, "the backend revoke", jit)
    jit.work()
    assert len(jit.grants(rid, "revoke")) == 1
    released = [e.body for e in jit.rt.audit.entries_for_request(rid) if e.body["event"] == "grant.released"]
    assert len(released) == 1 and released[0]["actor"] == "U0ALICE"
    assert jit.credential(rid).status_code == 410
    texts = [c.params.get("text") or "" for c in slack.calls("chat.postMessage")]
    assert any("was approved" in t for t in texts)  # the requester's DMs go on…
    assert not any("revoked early" in t for t in texts)  # …but ending it themselves is no news to them


def test_a_stranger_cannot_release(jit, slack):
    rid = active(jit, "read-secret", ["U0LEAD1"])
    assert jit.click(RELEASE, rid, "U0STRANGER", button_text="Release now").status_code == 200
    note_for(slack, "U0STRANGER", "not an approver", jit)
    assert jit.status(rid).get_json()["status"] == "active"
    refused = [e.body for e in jit.rt.audit.entries_for_request(rid) if e.body["event"] == "release.refused"]
    assert refused and refused[0]["actor"] == "U0STRANGER"


def test_an_approver_extends_with_the_modal(jit, slack):
    rid = active(jit, "read-secret", ["U0LEAD1"], ttl="10m")
    before = jit.rt.store.get(rid).expires_at
    view = open_extend(jit, slack, rid, "U0LEAD1")
    assert view["callback_id"] == "jit_extend_modal" and "10m" in json.dumps(view["blocks"])
    bad = submit_extend(jit, view, "U0LEAD1", "soon")
    assert bad.get_json()["response_action"] == "errors"
    over = submit_extend(jit, view, "U0LEAD1", "1h")
    assert "max_total" in over.get_json()["errors"][EXTEND_TTL_BLOCK]
    assert jit.rt.store.get(rid).expires_at == before
    ok = submit_extend(jit, view, "U0LEAD1", "5m", "still migrating")
    assert ok.status_code == 200 and not ok.data
    assert (jit.rt.store.get(rid).expires_at - before).total_seconds() == 300
    jit.work()
    status = json.dumps(slack.message(jit.rt.store.get(rid).message_ts)["blocks"], ensure_ascii=False)
    assert "Active" in status and "— extended" in status
    ext = [e.body for e in jit.rt.audit.entries_for_request(rid) if e.body["event"] == "grant.extended"]
    assert ext[0]["actor"] == "U0LEAD1" and ext[0]["details"]["reason"] == "still migrating"
    # a stranger's click opens nothing
    assert jit.click(EXTEND, rid, "U0STRANGER", trigger_id="t.1", button_text="Extend").status_code == 200
    note_for(slack, "U0STRANGER", "not an approver", jit)


def test_an_extension_round_needs_another_approver(jit, slack):
    rid = active(jit, "deploy-prod", ["U0LEAD1", "U0LEAD2"])
    before = jit.rt.store.get(rid).expires_at
    view = open_extend(jit, slack, rid, "U0LEAD1")
    assert submit_extend(jit, view, "U0LEAD1", "10m", "one more step").status_code == 200
    jit.work()
    msg = slack.message(jit.rt.store.get(rid).message_ts)
    assert "Extension requested" in json.dumps(msg["blocks"]) and "jit_approve" in buttons(msg["blocks"])
    jit.approve(rid, "U0LEAD1")  # who asked
    note_for(slack, "U0LEAD1", "someone else must approve", jit)
    jit.approve(rid, "U0ALICE")  # the requester
    note_for(slack, "U0ALICE", "someone else must approve", jit)
    jit.approve(rid, "U0STRANGER")
    note_for(slack, "U0STRANGER", "not an approver", jit)
    assert jit.rt.store.get(rid).expires_at == before
    jit.approve(rid, "U0LEAD2")
    assert (jit.rt.store.get(rid).expires_at - before).total_seconds() == 600
    jit.work()
    msg = slack.message(jit.rt.store.get(rid).message_ts)
    assert "Extension requested" not in json.dumps(msg["blocks"]) and EXTEND in buttons(msg["blocks"])


@pytest.fixture
def warn_ten_minutes_before(monkeypatch, jit_env):
    monkeypatch.setenv("JIT_WARN_BEFORE", "10m")


def test_the_warning_has_extend_and_release_and_is_rearmed(warn_ten_minutes_before, jit, slack):
    rid = active(jit, "read-secret", ["U0LEAD1"], ttl=603)  # warned 3 s after the grant
    ts = jit.rt.store.get(rid).message_ts
    warning = until(
        lambda: [c for c in slack.calls("chat.postMessage") if c.ok and c.params.get("thread_ts") == ts],
        "the warning",
        jit,
    )[0]
    assert "expires in 10 min" in warning.params["text"]
    assert buttons(warning.params["blocks"]) == {EXTEND: "Extend", RELEASE: "Release"}
    # extended: the warning is owed again, before the new end
    resp = jit.http.post(
        f"/v1/requests/{rid}/extend",
        json={"ttl": "5m"},
        headers={"Authorization": f"Bearer {jit.follow_token(rid, WEB_TOKEN)}"},
    )
    assert resp.status_code == 200
    jit.work()
    new_end = jit.rt.store.get(rid).expires_at.timestamp()
    assert jit.rt.redis.hget(f"jit:req:{rid}", "warned_ms") is None
    assert jit.rt.redis.zscore("jit:due", f"warn:{rid}") == pytest.approx((new_end - 600) * 1000, abs=1)
