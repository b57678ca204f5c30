"""Refusals reach the audit trail at most 10 times per actor and minute; the rest are summed up."""

from __future__ import annotations

import threading

import pytest
from fakes.slack import TEAM_ID, block_action, sign, slash_command
from freezegun import freeze_time
from support import SIGNING_SECRET

from bot.store import keys
from bot.store.refusals import REFUSALS_PER_WINDOW, record_refusal

T0 = "2030-01-01T00:00:00Z"


def bodies(rt, event=None) -> list[dict]:
    return [e.body for e in rt.audit.entries() if event is None or e.body["event"] == event]


def refuse(rt, actor, n=1, event="slack.refused", **kw) -> int:
    return sum(record_refusal(rt.redis, rt.audit, event, actor=actor, details={"why": "test"}, **kw) for _ in range(n))


def test_an_actor_is_recorded_ten_times_a_minute_then_summed_up(rt):
    with freeze_time(T0) as frozen:
        assert refuse(rt, "U0PEST", 25) == REFUSALS_PER_WINDOW
        assert refuse(rt, "U0OTHER", 3) == 3  # each actor has its own budget
        assert refuse(rt, "U0PEST", 1, event="audit.read_refused") == 1  # and each kind
        assert len(bodies(rt)) == REFUSALS_PER_WINDOW + 4
        frozen.tick(59)
        assert refuse(rt, "U0PEST") == 0  # still the same window
        frozen.tick(1.001)
        assert refuse(rt, "U0PEST") == 1  # a new window: written, after the summary of the last
    *_, summary, record = bodies(rt)
    assert summary["event"] == "slack.refusals_suppressed" and summary["actor"] == "U0PEST"
    assert summary["outcome"] == "refused"
    assert summary["details"] == {
        "event": "slack.refused",
        "count": 16,
        "window_start": "2030-01-01T00:00:00.000Z",
        "window_end": "2030-01-01T00:01:00.000Z",
    }
    assert record["event"] == "slack.refused" and record["details"] == {"why": "test"}
    assert len(bodies(rt, "slack.refusals_suppressed")) == 1
    assert rt.audit.verify()[1] is None  # the chain holds


def test_the_summary_does_not_wait_for_its_actor_to_come_back(rt):
    with freeze_time(T0) as frozen:
        refuse(rt, "U0PEST", 15)
        frozen.tick(61)
        refuse(rt, "U0SOMEONE")  # anyone's next refusal writes the summaries that are due
    summaries = bodies(rt, "slack.refusals_suppressed")
    assert [(s["actor"], s["details"]["count"]) for s in summaries] == [("U0PEST", 5)]
    assert rt.redis.hlen(keys.refusals_suppressed()) == 0 and rt.redis.zcard(keys.refusals_due()) == 0
    with freeze_time(T0) as frozen:
        frozen.tick(200)
        refuse(rt, "U0PEST")
    assert len(bodies(rt, "slack.refusals_suppressed")) == 1  # summed up once, not again


def test_concurrent_refusals_are_counted_exactly(rt):
    threads = [threading.Thread(target=refuse, args=(rt, "U0PEST", 10)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(bodies(rt, "slack.refused")) == REFUSALS_PER_WINDOW
    assert int(rt.redis.hget(keys.refusals_suppressed(), '["slack.refused", "U0PEST"]')) == 70
    assert rt.redis.pttl(keys.refusals("slack.refused", "U0PEST")) > 0  # the counter goes by itself


# ------------------------------------------------------------------------ through Slack


@pytest.mark.parametrize("n", [30])
def test_refused_audit_reads_grow_the_trail_by_at_most_ten(jit, n):
    before = jit.rt.audit.count()
    for _ in range(n):
        resp = jit.post_slack(slash_command("audit", "U0NOBODY"))
        assert resp.status_code == 200 and "only auditors and approvers" in resp.get_data(as_text=True)
    assert jit.rt.audit.count() - before == REFUSALS_PER_WINDOW
    assert len(bodies(jit.rt, "audit.read_refused")) == REFUSALS_PER_WINDOW


def test_replayed_and_foreign_clicks_grow_the_trail_by_at_most_ten(jit):
    jit.rt.redis.set(keys.slack_team(), TEAM_ID)
    rid = jit.ask("deploy-prod")["id"]
    req = jit.wait_for_message(rid)
    body, ctype = block_action("jit_deny", rid, "U0LEAD1", channel=req.channel, message_ts=req.message_ts)
    headers = sign(SIGNING_SECRET, body, content_type=ctype)
    assert jit.http.post("/slack/events", data=body, headers=headers).status_code == 200
    before = jit.rt.audit.count()
    for _ in range(30):
        assert jit.http.post("/slack/events", data=body, headers=headers).status_code == 401
        foreign = block_action(
            "jit_approve",
            rid,
            "U0LEAD1",
            team_id="T0EVIL",
            channel=req.channel,
            message_ts=req.message_ts,
        )
        assert jit.post_slack(foreign).status_code == 401
    refused = bodies(jit.rt, "slack.refused")
    assert jit.rt.audit.count() - before == REFUSALS_PER_WINDOW
    assert {e["details"]["why"] for e in refused} == {"replayed request", "other workspace"}
