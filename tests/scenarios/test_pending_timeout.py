"""A request nobody decides becomes timed_out; a click that races the timeout loses cleanly."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from freezegun import freeze_time

from bot.core.clock import now


def test_pending_timeout_with_frozen_time(jit, slack):
    start = now()
    with freeze_time(start) as frozen:
        rid = jit.ask("deploy-prod")["id"]  # pending_timeout 20m for this action
        jit.work()
        frozen.tick(timedelta(minutes=19))
        from workers.jobs.timeout import time_out as do_timeout
        from workers.queue.retry import RetryLater

        with pytest.raises(RetryLater) as early:  # the timer never fires early
            do_timeout(jit.rt, rid, "")
        assert 59_000 <= early.value.delay_ms <= 60_000
        assert jit.status(rid).get_json()["status"] == "pending"
        frozen.tick(timedelta(minutes=1, seconds=1))
        # a click after the deadline does not count, even before the timer fired
        jit.approve(rid, "U0LEAD1")
        assert jit.status(rid).get_json()["approvals"]["count"] == 0
        do_timeout(jit.rt, rid, "")
        assert jit.status(rid).get_json()["status"] == "timed_out"
    jit.work()
    assert "Timed out" in str(slack.message(jit.rt.store.get(rid).message_ts)["blocks"])


def test_pending_timeout_in_real_time(jit, policy_file, state_dir):
    from support import policy_text

    policy_file.write_text(policy_text(str(state_dir), pending_timeout="1s"))
    jit.rt._policy = None  # reload for this test
    rid = jit.ask("read-secret")["id"]
    jit.work()
    time.sleep(1.2)
    jit.work()
    assert jit.status(rid).get_json()["status"] == "timed_out"
    events = [e.body["event"] for e in jit.rt.audit.latest(10)]
    assert "request.timed_out" in events
