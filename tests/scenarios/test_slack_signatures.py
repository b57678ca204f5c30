"""Only signed, fresh Slack requests get through; refusals change nothing."""

from __future__ import annotations

import time

from fakes.slack import block_action, slash_command


def test_forged_signature_is_401(jit):
    rid = jit.ask("read-secret")["id"]
    jit.work()
    resp = jit.post_slack(block_action("jit_approve", rid, "U0LEAD1"), secret="not-the-secret")
    assert resp.status_code == 401
    assert jit.status(rid).get_json()["approvals"]["count"] == 0


def test_stale_timestamp_is_401(jit):
    rid = jit.ask("read-secret")["id"]
    jit.work()
    ts = jit.rt.store.get(rid).message_ts
    resp = jit.post_slack(block_action("jit_approve", rid, "U0LEAD1", message_ts=ts), timestamp=int(time.time()) - 301)
    assert resp.status_code == 401
    assert jit.status(rid).get_json()["status"] == "pending"


def test_unsigned_request_is_401(jit):
    body, ctype = slash_command("status", "U0LEAD1")
    resp = jit.http.post("/slack/events", data=body, headers={"Content-Type": ctype})
    assert resp.status_code == 401


def test_signed_slash_command_is_answered(jit):
    resp = jit.post_slack(slash_command("help", "U0LEAD1"))
    assert resp.status_code == 200
    assert "/jit status" in resp.get_data(as_text=True)


def test_slash_command_mentioning_payload_is_still_a_command(jit):
    # Bolt alone would read this form body as an (empty) interaction payload
    resp = jit.post_slack(slash_command("help payload", "U0LEAD1", channel_name="payload-team"))
    assert resp.status_code == 200
    assert "/jit status" in resp.get_data(as_text=True)
