"""Reminders in a request's thread: at half its pending timeout, and JIT_WARN_BEFORE (5 min) before a grant
ends.

The clock is frozen and moved by hand (freezegun): each reminder is checked against the moment it is
due, not against how quickly a busy machine runs the due work.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from freezegun import freeze_time
from support import clock_start, policy_text

from bot.core.clock import now_ms, to_ms
from bot.store.requests import DECISION_MESSAGE_MS


@pytest.fixture
def policy_file(tmp_path, state_dir):
    p = tmp_path / "jit-policy.yaml"
    p.write_text(policy_text(str(state_dir), pending_timeout="4s"))
    return p


def thread(slack, ts):
    return [c for c in slack.calls("chat.postMessage") if c.ok and c.params.get("thread_ts") == ts]


def warnings(slack, ts):
    return [c for c in thread(slack, ts) if "expires in" in c.params["text"]]


def asked_and_posted(jit, **body) -> tuple[str, str]:
    """A pipeline asks; the request's message goes out (at the frozen moment). → (id, message ts)"""
    rid = jit.ask("read-secret", **body)["id"]
    jit.work()
    ts = jit.rt.store.get(rid).message_ts
    assert ts, "the request message"
    return rid, ts


def active(jit, rid, clock) -> None:
    """Approved and granted; its message (and the follow-ups it schedules) goes out
    DECISION_MESSAGE_MS later, with the grant in it."""
    jit.approve(rid, "U0LEAD1")
    jit.work()
    assert jit.status(rid).get_json()["status"] == "active"
    clock.tick(timedelta(milliseconds=DECISION_MESSAGE_MS))
    jit.work()


def test_pending_reminder_at_half_the_timeout(jit, slack):
    with freeze_time(clock_start()) as clock:
        rid, ts = asked_and_posted(jit)
        req = jit.rt.store.get(rid)
        # in Redis (survives any restart), due at exactly half of the 4 s pending timeout
        assert jit.rt.redis.zscore("jit:due", f"remind:{rid}") == to_ms(req.created_at) + 2000
        clock.tick(timedelta(milliseconds=1999))
        jit.work()
        assert thread(slack, ts) == [], "never early"
        clock.tick(timedelta(milliseconds=1))
        jit.work()
        (note,) = thread(slack, ts)
        text = note.params["text"]
        assert "Still waiting for approval (0 of 1 approvals)" in text and "times out in" in text
        assert "<@U0LEAD1>" in text and "<@U0ALICE>" in text  # the approvers are nudged
        clock.tick(timedelta(seconds=2))
        jit.work()
        assert jit.status(rid).get_json()["status"] == "timed_out"
        jit.work()
        assert len(thread(slack, ts)) == 1


def test_a_decided_request_gets_no_reminder(jit, slack):
    with freeze_time(clock_start()) as clock:
        rid, ts = asked_and_posted(jit)
        active(jit, rid, clock)
        clock.tick(timedelta(seconds=3))  # past the reminder's moment: its item comes due and retires
        jit.work()
        assert jit.rt.redis.zscore("jit:due", f"remind:{rid}") is None
        assert thread(slack, ts) == []


@pytest.fixture
def warn_ten_minutes_before(monkeypatch, jit_env):
    monkeypatch.setenv("JIT_WARN_BEFORE", "10m")


def test_expiry_warning_before_the_end(warn_ten_minutes_before, jit, slack):
    with freeze_time(clock_start()) as clock:
        rid, ts = asked_and_posted(jit, ttl=603)  # 10m 3s: the warning is due 3 s after the grant
        active(jit, rid, clock)
        req = jit.rt.store.get(rid)
        warn_at = to_ms(req.expires_at) - 600_000
        assert jit.rt.redis.zscore("jit:due", f"warn:{rid}") == warn_at
        clock.tick(timedelta(milliseconds=warn_at - now_ms() - 1))
        jit.work()
        assert warnings(slack, ts) == [], "never early"
        clock.tick(timedelta(milliseconds=1))
        jit.work()
        (note,) = warnings(slack, ts)
        assert "expires in 10 min" in note.params["text"]
        clock.tick(timedelta(seconds=10))
        jit.work()
        assert len(warnings(slack, ts)) == 1


def test_short_grants_get_no_warning(jit, slack):
    with freeze_time(clock_start()) as clock:
        rid, _ = asked_and_posted(jit, ttl="5m")
        active(jit, rid, clock)
        jit.work()
        assert jit.rt.redis.zscore("jit:due", f"warn:{rid}") is None


def test_a_grant_ended_early_gets_no_warning(jit, slack):
    with freeze_time(clock_start()) as clock:
        rid, ts = asked_and_posted(jit, ttl=303)
        active(jit, rid, clock)
        jit.release(rid)
        clock.tick(timedelta(seconds=4))  # past the warning's moment: its item comes due and retires
        jit.work()
        assert jit.rt.redis.zscore("jit:due", f"warn:{rid}") is None
        assert warnings(slack, ts) == []
