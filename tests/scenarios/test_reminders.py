"""Reminders in a request's thread: at half its pending timeout, and JIT_WARN_BEFORE (5 min) before a grant
ends."""

from __future__ import annotations

import time

import pytest
from support import policy_text


@pytest.fixture
def policy_file(tmp_path, state_dir):
    p = tmp_path / "jit-policy.yaml"
    p.write_text(policy_text(str(state_dir), pending_timeout="4s"))
    return p


def thread(slack, ts):
    return [c for c in slack.calls("chat.postMessage") if c.ok and c.params.get("thread_ts") == ts]


def test_pending_reminder_at_half_the_timeout(jit, slack):
    rid = jit.ask("read-secret")["id"]
    req = jit.rt.store.get(rid)
    ts = jit.drain(lambda: jit.rt.store.get(rid).message_ts, what="the request message")
    due = jit.rt.redis.zscore("jit:due", f"remind:{rid}")  # in Redis: survives any restart
    half = req.created_at.timestamp() + 2.0
    assert due is not None and abs(due / 1000 - half) < 0.01
    notes = jit.drain(lambda: thread(slack, ts), timeout=30, what="the reminder")
    assert notes[0].time >= half - 0.05
    assert notes[0].time < req.pending_until.timestamp()
    text = notes[0].params["text"]
    assert "Still waiting for approval (0 of 1 approvals)" in text and "times out in" in text
    assert "<@U0LEAD1>" in text and "<@U0ALICE>" in text  # the approvers are nudged
    jit.drain(lambda: jit.status(rid).get_json()["status"] == "timed_out", timeout=30, what="the timeout")
    jit.work()
    assert len(thread(slack, ts)) == 1


def test_a_decided_request_gets_no_reminder(jit, slack):
    rid = jit.ask("read-secret")["id"]
    ts = jit.drain(lambda: jit.rt.store.get(rid).message_ts, what="the request message")
    jit.approve(rid, "U0LEAD1")
    jit.drain(lambda: jit.status(rid).get_json()["status"] == "active", what="active")
    remind_at = jit.rt.store.get(rid).created_at.timestamp() + 2.0
    # the reminder item (if still queued) comes due and finds the request moved on
    jit.drain(
        lambda: time.time() > remind_at + 1 and jit.rt.redis.zscore("jit:due", f"remind:{rid}") is None,
        timeout=30,
        what="the reminder item to retire",
    )
    assert thread(slack, ts) == []


@pytest.fixture
def warn_ten_minutes_before(monkeypatch, jit_env):
    monkeypatch.setenv("JIT_WARN_BEFORE", "10m")


def test_expiry_warning_before_the_end(warn_ten_minutes_before, jit, slack):
    rid = jit.ask("read-secret", ttl=603)["id"]  # 10m 3s: the warning is due 3 s after the grant
    ts = jit.drain(lambda: jit.rt.store.get(rid).message_ts, what="the request message")
    jit.approve(rid, "U0LEAD1")
    jit.drain(lambda: jit.status(rid).get_json()["status"] == "active", what="active")
    req = jit.rt.store.get(rid)
    warn_at = req.expires_at.timestamp() - 600
    assert jit.rt.redis.zscore("jit:due", f"warn:{rid}") == pytest.approx(warn_at * 1000, abs=1)
    notes = jit.drain(
        lambda: [c for c in thread(slack, ts) if "expires in" in c.params["text"]], timeout=30, what="the warning"
    )
    assert notes[0].time >= warn_at - 0.05
    assert "expires in 10 min" in notes[0].params["text"]
    jit.work()
    assert len([c for c in thread(slack, ts) if "expires in" in c.params["text"]]) == 1


def test_short_grants_get_no_warning(jit, slack):
    rid = jit.ask("read-secret", ttl="5m")["id"]
    jit.work()
    jit.approve(rid, "U0LEAD1")
    jit.drain(lambda: jit.status(rid).get_json()["status"] == "active", what="active")
    jit.work()
    assert jit.rt.redis.zscore("jit:due", f"warn:{rid}") is None


def test_a_grant_ended_early_gets_no_warning(jit, slack):
    rid = jit.ask("read-secret", ttl=303)["id"]
    ts = jit.drain(lambda: jit.rt.store.get(rid).message_ts, what="the request message")
    jit.approve(rid, "U0LEAD1")
    jit.drain(lambda: jit.status(rid).get_json()["status"] == "active", what="active")
    warn_at = jit.rt.store.get(rid).expires_at.timestamp() - 300
    jit.release(rid)
    jit.drain(
        lambda: time.time() > warn_at + 1 and jit.rt.redis.zscore("jit:due", f"warn:{rid}") is None,
        timeout=30,
        what="the warning item to retire",
    )
    assert not [c for c in thread(slack, ts) if "expires in" in c.params["text"]]
