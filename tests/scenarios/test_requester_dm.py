"""The requester hears the outcome in a DM: once per outcome, however often the jobs run."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from freezegun import freeze_time
from support import policy_text

ALICE = "U0ALICE"  # `people: alice@example.com` in the test policy
START = "2026-11-30 10:00:00"


@pytest.fixture
def policy_file(tmp_path, state_dir):
    p = tmp_path / "jit-policy.yaml"
    p.write_text(policy_text(str(state_dir), pending_timeout="3s"))
    return p


def dms(slack, user=ALICE):
    channel = slack.dm_channel(user)
    return [m["text"] for m in slack.messages(channel).values()]


def settle(jit, seconds=1.5):
    """Let any job that might still send something run."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        jit.work()
        time.sleep(0.1)


def test_approval_then_expiry(jit, slack):
    with freeze_time(START) as clock:  # the 2 s grant ends when the test says, however busy the machine
        rid = jit.ask("quick", ttl="2s", requested_by="alice@example.com")["id"]
        assert jit.rt.store.get(rid).requester_slack_id == ALICE
        jit.work()
        jit.approve(rid, "U0LEAD1")
        jit.work()
        (approved,) = dms(slack)
        assert "was approved by <@U0LEAD1>" in approved and rid in approved
        clock.tick(timedelta(seconds=2))
        jit.work()
        assert dms(slack)[1:] and "expired and was revoked" in dms(slack)[1]
        clock.tick(timedelta(seconds=5))
        jit.work()
        assert len(dms(slack)) == 2
    assert [c.params["users"] for c in slack.calls("conversations.open")] == [ALICE]  # DM channel cached


def test_denial_with_its_reason(jit, slack):
    rid = jit.ask("read-secret", requested_by="alice@example.com")["id"]
    jit.work()
    jit.rt.decisions.deny(rid, "U0LEAD1", "not during the freeze")
    got = jit.drain(lambda: dms(slack), what="denied DM")
    assert "was denied by <@U0LEAD1>: not during the freeze" in got[0]
    settle(jit)
    assert len(dms(slack)) == 1


def test_timed_out(jit, slack):
    with freeze_time(START) as clock:
        rid = jit.ask("read-secret", requested_by="alice@example.com")["id"]
        jit.work()
        assert dms(slack) == []
        clock.tick(timedelta(seconds=3))  # the pending timeout
        jit.work()
        (got,) = dms(slack)
        assert "timed out" in got and rid in got and "3s" in got
        clock.tick(timedelta(seconds=5))
        jit.work()
        assert len(dms(slack)) == 1


def test_pipeline_release_is_no_news_to_its_requester(jit, slack):
    rid = jit.ask("read-secret", requested_by="alice")["id"]
    jit.work()
    jit.approve(rid, "U0LEAD1")
    jit.drain(lambda: dms(slack), what="approved DM")
    jit.release(rid)
    settle(jit)
    assert len(dms(slack)) == 1 and "approved" in dms(slack)[0]


def test_no_slack_user_no_dm(jit, slack):
    rid = jit.ask("read-secret", requested_by="mallory@example.com")["id"]
    jit.work()
    jit.rt.decisions.deny(rid, "U0LEAD1", "who are you")
    settle(jit)
    assert not slack.calls("conversations.open")
    assert not [c for c in slack.calls("chat.postMessage") if c.params["channel"].startswith("D")]


def test_concurrent_and_repeated_jobs_send_once(jit, slack):
    from workers.jobs.notify import followups
    from workers.queue.retry import RetryLater

    rid = jit.ask("read-secret", requested_by="alice@example.com")["id"]
    jit.work()
    jit.rt.decisions.deny(rid, "U0LEAD1", "no")
    jit.rt.redis.zrem("jit:due", f"dm:{rid}")  # only the calls below send

    def run():
        for _ in range(50):
            try:
                followups.do_dm(jit.rt, rid)
                return
            except RetryLater as e:
                time.sleep(e.delay_ms / 1000)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run()
    assert len(dms(slack)) == 1


def test_a_user_slack_refuses_is_not_retried_forever(jit, slack):
    slack.api_error("user_not_found", methods="conversations.open")
    rid = jit.ask("read-secret", requested_by="alice@example.com")["id"]
    jit.work()
    jit.rt.decisions.deny(rid, "U0LEAD1", "no")
    jit.drain(lambda: jit.rt.redis.hget(f"jit:req:{rid}", "dm_denied"), what="the DM given up")
    assert jit.rt.redis.hget(f"jit:req:{rid}", "dm_denied") == "error:user_not_found"
    assert jit.rt.redis.zscore("jit:due", f"dm:{rid}") is None
    calls = len(slack.calls("conversations.open"))
    settle(jit)
    assert len(slack.calls("conversations.open")) == calls
