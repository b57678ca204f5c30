"""The requester hears the outcome in a DM: once per outcome, however often the jobs run.

The clock is frozen and moved by hand (freezegun): a 3 s pending timeout or a 2 s grant ends when
the test says, never while a busy machine is still working through the step before.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from freezegun import freeze_time
from support import clock_start, policy_text

from bot.store.requests import DECISION_MESSAGE_MS

ALICE = "U0ALICE"  # `people: alice@example.com` in the test policy


@pytest.fixture
def policy_file(tmp_path, state_dir):
    p = tmp_path / "jit-policy.yaml"
    p.write_text(policy_text(str(state_dir), pending_timeout="3s"))
    return p


@pytest.fixture
def clock():
    with freeze_time(clock_start()) as frozen:
        yield frozen


def dms(slack, user=ALICE):
    channel = slack.dm_channel(user)
    return [m["text"] for m in slack.messages(channel).values()]


def later(jit, clock, seconds: float = 1.5) -> None:
    """Time passes (less than the 3 s pending timeout): any job that might still send something runs."""
    clock.tick(timedelta(seconds=seconds))
    jit.work()


def test_approval_then_expiry(jit, slack, clock):
    rid = jit.ask("quick", ttl="2s", requested_by="alice@example.com")["id"]
    assert jit.rt.store.get(rid).requester_slack_id == ALICE
    jit.work()
    jit.approve(rid, "U0LEAD1")
    jit.work()
    clock.tick(timedelta(milliseconds=DECISION_MESSAGE_MS))  # the approval's message, with the grant
    jit.work()
    (approved,) = dms(slack)
    assert "was approved by <@U0LEAD1>" in approved and rid in approved
    clock.tick(timedelta(seconds=2))
    jit.work()  # the revocation: Redis work only, no Slack on its path
    # the expired message's update, and the DM with it, are coalesced for a second then paced
    later(jit, clock, 2)
    assert dms(slack)[1:] and "expired and was revoked" in dms(slack)[1]
    later(jit, clock, 5)
    assert len(dms(slack)) == 2
    assert [c.params["users"] for c in slack.calls("conversations.open")] == [ALICE]  # DM channel cached


def test_denial_with_its_reason(jit, slack, clock):
    rid = jit.ask("read-secret", requested_by="alice@example.com")["id"]
    jit.work()
    jit.rt.decisions.deny(rid, "U0LEAD1", "not during the freeze")
    jit.work()
    (got,) = dms(slack)
    assert "was denied by <@U0LEAD1>: not during the freeze" in got
    later(jit, clock)
    assert len(dms(slack)) == 1


def test_timed_out(jit, slack, clock):
    rid = jit.ask("read-secret", requested_by="alice@example.com")["id"]
    jit.work()
    assert dms(slack) == []
    clock.tick(timedelta(seconds=3))  # the pending timeout
    jit.work()
    (got,) = dms(slack)
    assert "timed out" in got and rid in got and "3s" in got
    later(jit, clock, 5)
    assert len(dms(slack)) == 1


def test_pipeline_release_is_no_news_to_its_requester(jit, slack, clock):
    rid = jit.ask("read-secret", requested_by="alice")["id"]
    jit.work()
    jit.approve(rid, "U0LEAD1")
    jit.work()
    clock.tick(timedelta(milliseconds=DECISION_MESSAGE_MS))  # the approval's message, with the grant
    jit.work()
    assert len(dms(slack)) == 1
    jit.release(rid)
    later(jit, clock)
    assert len(dms(slack)) == 1 and "approved" in dms(slack)[0]


def test_no_slack_user_no_dm(jit, slack, clock):
    rid = jit.ask("read-secret", requested_by="mallory@example.com")["id"]
    jit.work()
    jit.rt.decisions.deny(rid, "U0LEAD1", "who are you")
    later(jit, clock)
    assert not slack.calls("conversations.open")
    assert not [c for c in slack.calls("chat.postMessage") if c.params["channel"].startswith("D")]


def test_concurrent_and_repeated_jobs_send_once(jit, slack, clock):
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
            except RetryLater as e:  # another call holds the notice lock (a Redis lock, in real time)
                time.sleep(e.delay_ms / 1000)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run()
    assert len(dms(slack)) == 1


def test_a_user_slack_refuses_is_not_retried_forever(jit, slack, clock):
    slack.api_error("user_not_found", methods="conversations.open")
    rid = jit.ask("read-secret", requested_by="alice@example.com")["id"]
    jit.work()
    jit.rt.decisions.deny(rid, "U0LEAD1", "no")
    jit.work()
    assert jit.rt.redis.hget(f"jit:req:{rid}", "dm_denied") == "error:user_not_found"
    assert jit.rt.redis.zscore("jit:due", f"dm:{rid}") is None
    calls = len(slack.calls("conversations.open"))
    later(jit, clock)
    assert len(slack.calls("conversations.open")) == calls
