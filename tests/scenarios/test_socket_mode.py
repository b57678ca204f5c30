"""Slack over Socket Mode: the approval scenario of the HTTP path, through a WebSocket."""

from __future__ import annotations

import json
import time

import pytest
from fakes.slack import TEAM_ID, block_action, slash_command

APP_TOKEN = "xapp-1-A0JITAPP-1-sockettest"


@pytest.fixture
def jit_env(jit_env, monkeypatch):
    monkeypatch.setenv("SLACK_APP_TOKEN", APP_TOKEN)
    return {**jit_env, "SLACK_APP_TOKEN": APP_TOKEN}


@pytest.fixture
def socket(slack):
    return slack.socket_mode(APP_TOKEN)


@pytest.fixture
def connected(rt, socket):
    from bot.decision.slack.socket_mode import start_socket_mode

    handler = start_socket_mode(rt)
    socket.wait_connected(1, timeout=20)
    yield handler
    handler.close()


def wait_for(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def audit_events(rt, name):
    return [e.body for e in rt.audit.latest(100) if e.body["event"] == name]


def test_connection_uses_the_app_token(connected, slack, socket):
    opens = slack.calls("apps.connections.open")
    assert opens and opens[0].ok
    assert opens[0].headers.get("Authorization") == f"Bearer {APP_TOKEN}"


def test_approval_over_socket_mode(jit, slack, socket, connected):
    rid = jit.ask("deploy-prod", reason="release 4.2")["id"]
    ts = jit.message_ts(rid)
    assert ts

    first = socket.send_built(block_action("jit_approve", rid, "U0LEAD1", channel="C0PROD", message_ts=ts))
    assert socket.wait_ack(first) == {"envelope_id": first}
    wait_for(lambda: jit.rt.store.get(rid).approvals, what="first approval recorded")
    jit.work()
    assert jit.status(rid).get_json()["status"] == "pending"
    assert "1 of 2" in json.dumps(slack.message(ts)["blocks"])

    second = socket.send_built(block_action("jit_approve", rid, "U0LEAD3", channel="C0PROD", message_ts=ts))
    socket.wait_ack(second)
    wait_for(lambda: jit.rt.store.get(rid).status != "pending", what="approval threshold")
    jit.work()
    body = jit.status(rid).get_json()
    assert body["status"] == "active"
    assert set(body["approvals"]["by"]) == {"U0LEAD1", "U0LEAD3"}
    assert jit.credential(rid).status_code == 200
    assert "Revoke now" in json.dumps(slack.message(ts)["blocks"])


def test_slash_command_answers_in_the_ack(jit, socket, connected):
    rid = jit.ask("read-secret")["id"]
    jit.work()
    eid = socket.send_built(slash_command(f"status {rid}", "U0LEAD1", channel_id="C0APPROVALS"))
    ack = socket.wait_ack(eid)
    assert ack["envelope_id"] == eid
    assert rid in json.dumps(ack["payload"])


def test_the_same_envelope_twice_counts_once(jit, socket, connected):
    rid = jit.ask("deploy-prod")["id"]
    ts = jit.message_ts(rid)
    click = block_action("jit_approve", rid, "U0LEAD1", channel="C0PROD", message_ts=ts)
    eid = socket.send_built(click)
    socket.wait_ack(eid)
    wait_for(lambda: audit_events(jit.rt, "approval.given"), what="approval audited")
    socket.send_built(click, envelope_id=eid)
    wait_for(lambda: len(socket.acks(eid)) == 2, what="second ack")
    refused = wait_for(lambda: audit_events(jit.rt, "slack.refused"), what="replay refused")
    assert refused[0]["details"]["why"] == "replayed request"
    assert len(audit_events(jit.rt, "approval.given")) == 1
    assert not [e for e in audit_events(jit.rt, "approval.refused")]


def test_other_workspace_refused(jit, socket, connected):
    jit.rt.redis.set("jit:slack:team", TEAM_ID)
    rid = jit.ask("read-secret")["id"]
    ts = jit.message_ts(rid)
    eid = socket.send_built(
        block_action("jit_approve", rid, "U0LEAD1", team_id="T0EVIL", channel="C0APPROVALS", message_ts=ts)
    )
    assert socket.wait_ack(eid) == {"envelope_id": eid}
    refused = wait_for(lambda: audit_events(jit.rt, "slack.refused"), what="refusal audited")
    assert refused[0]["details"]["why"] == "other workspace"
    jit.work()
    assert jit.status(rid).get_json()["approvals"]["count"] == 0


def test_other_workspace_refused_before_any_worker_learned_the_workspace(jit, slack, socket, connected):
    assert jit.rt.redis.get("jit:slack:team") is None
    rid = jit.ask("read-secret")["id"]
    ts = jit.message_ts(rid)
    eid = socket.send_built(
        block_action("jit_approve", rid, "U0LEAD1", team_id="T0EVIL", channel="C0APPROVALS", message_ts=ts)
    )
    assert socket.wait_ack(eid) == {"envelope_id": eid}
    refused = wait_for(lambda: audit_events(jit.rt, "slack.refused"), what="refusal audited")
    assert refused[0]["details"] == {"why": "other workspace", "team": "T0EVIL"}
    assert jit.rt.redis.get("jit:slack:team") == TEAM_ID and len(slack.calls("auth.test")) == 1
    jit.work()
    assert jit.status(rid).get_json()["approvals"]["count"] == 0


def test_envelopes_stay_unacked_while_the_workspace_cannot_be_known(jit, slack, socket, connected, caplog):
    rid = jit.ask("read-secret")["id"]
    ts = jit.message_ts(rid)
    slack.fail_with(503, methods="auth.test")
    click = block_action("jit_approve", rid, "U0LEAD1", channel="C0APPROVALS", message_ts=ts)
    eid = socket.send_built(click)
    wait_for(lambda: "workspace" in caplog.text and eid in caplog.text, what="the envelope refused")
    assert socket.acks(eid) == []  # unacked: Slack sends it again
    assert jit.rt.store.get(rid).approvals == [] and not audit_events(jit.rt, "slack.refused")
    # Slack's retry of the same envelope, once auth.test answers: handled (it was not marked seen)
    slack.clear_faults()
    socket.send_built(click, envelope_id=eid)
    assert socket.wait_ack(eid) == {"envelope_id": eid}
    wait_for(lambda: jit.rt.store.get(rid).status != "pending", what="the approval")
    assert len(audit_events(jit.rt, "approval.given")) == 1


def test_button_naming_another_request_refused(jit, socket, connected):
    victim = jit.ask("read-secret")["id"]
    decoy = jit.ask("read-secret", reason="decoy")["id"]
    jit.work()
    decoy_ts = jit.rt.store.get(decoy).message_ts
    eid = socket.send_built(block_action("jit_approve", victim, "U0LEAD1", channel="C0APPROVALS", message_ts=decoy_ts))
    socket.wait_ack(eid)
    refused = wait_for(lambda: audit_events(jit.rt, "slack.refused"), what="refusal audited")
    assert refused[0]["request_id"] == victim
    jit.work()
    assert jit.status(victim).get_json()["status"] == "pending"


def test_reconnects_after_slack_closes_the_socket(jit, slack, socket, connected):
    before = socket.connections_opened
    socket.disconnect_all()
    wait_for(
        lambda: socket.connections_opened > before and socket.connected() >= 1,
        timeout=60,
        what="a new socket after the old one closed",
    )
    rid = jit.ask("read-secret")["id"]
    ts = jit.message_ts(rid)
    eid = socket.send_built(block_action("jit_approve", rid, "U0LEAD1", channel="C0APPROVALS", message_ts=ts))
    socket.wait_ack(eid, timeout=20)
    wait_for(lambda: jit.rt.store.get(rid).status != "pending", what="approval after reconnect")


def test_jit_serve_takes_slack_over_socket_mode():
    """The real server (gunicorn + gevent, two processes) with SLACK_APP_TOKEN: one socket each."""
    from procs import Stack
    from support import WEB_TOKEN

    with Stack(extra_env={"SLACK_APP_TOKEN": APP_TOKEN}) as stack:
        socket = stack.slack.socket_mode(APP_TOKEN)
        stack.serve(workers=2)
        stack.worker()
        socket.wait_connected(2, timeout=60)
        r = stack.ask("deploy-prod", WEB_TOKEN, reason="over the socket")
        assert r.status_code == 201, r.text
        rid, rtok = r.json()["id"], r.json()["request_token"]
        ts = stack.message_ts(rid)
        for user in ("U0LEAD1", "U0LEAD3"):  # round-robin: one click lands on each process
            eid = socket.send_built(block_action("jit_approve", rid, user, channel="C0PROD", message_ts=ts))
            assert socket.wait_ack(eid, timeout=20) == {"envelope_id": eid}
        body = stack.wait_status(rid, rtok, {"active"}, timeout=60)
        assert set(body["approvals"]["by"]) == {"U0LEAD1", "U0LEAD3"}
