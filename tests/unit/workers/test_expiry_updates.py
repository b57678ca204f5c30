"""workers/jobs/notify/expiries.py and RevokeService.expire_many: an expiry storm is revoked without
a single Slack call; the messages catch up afterwards — one digest per channel, then one
`chat.update` per slot of the workspace's pace — until every message shows its expiry."""

from __future__ import annotations

import pytest
from freezegun import freeze_time
from redis_state import classify, jit_keys, key_shapes
from unit_support import grant_claim

from bot.core.model import Status
from bot.request.schemas import RequestBody
from bot.store import keys
from bot.store.due import DueQueue
from bot.store.requests import EXPIRED_UPDATES
from workers.jobs import run_due
from workers.jobs.notify.message import sync_request_message
from workers.jobs.notify.pacing import drain_channel

T0 = "2026-12-02 10:00:00"
AFTER = "2026-12-02 10:11:00"  # read-secret grants last 10 minutes
CHANNEL = "C0APPROVALS"


@pytest.fixture
def posts_unpaced(jit_env, monkeypatch):
    monkeypatch.setenv("JIT_SLACK_POST_INTERVAL_MS", "0")  # first posts are not what is tested here


def active_with_messages(rt, backend, n: int) -> list[str]:
    ids = []
    with freeze_time(T0):
        for i in range(n):
            # one grant per CI run: a pipeline asking again for a grant it holds gets that one back
            run = {"context": {"repository": "acme/web", "run_id": str(1000 + i), "run_attempt": "1"}}
            rid = rt.requests.create("web-ci", RequestBody(action="read-secret", reason=f"storm {i}"), verified=run)
            rid = rid.request.id
            rt.decisions.approve(rid, "U0LEAD1")
            rt.grants.issue(rid, grant_claim(rt, rid), backend.backend_for)
            ids.append(rid)
        for rid in ids:
            sync_request_message(rt, rid)  # its first post is queued for its channel's poster
        drain_channel(rt, rt.store.get(ids[0]).channel, "the-test's")
    assert all(r.status == Status.ACTIVE and r.message_ts for r in rt.store.get_many(ids))
    return ids


def run_updates(rt) -> bool:
    """One run of the `updates:expired` job as a worker runs it: True when it finished, False when
    it put itself back for later (the next update slot is not free yet)."""
    claims = dict(DueQueue(rt.redis).claim(10**15))
    run_due(rt, EXPIRED_UPDATES, claims[EXPIRED_UPDATES])
    return DueQueue(rt.redis).score(EXPIRED_UPDATES) is None


def shown(slack, rid: str) -> str:
    [msg] = [m for m in slack.messages(CHANNEL).values() if m["text"].startswith(f"Access request {rid}:")]
    return msg["text"]


def test_a_storm_is_revoked_with_no_slack_call_then_one_digest_and_paced_updates(posts_unpaced, rt, backend, slack):
    ids = active_with_messages(rt, backend, 8)
    calls = len(slack.calls())
    with freeze_time(AFTER):
        waits = rt.revokes.expire_many(ids, backend.backend_for)
        assert waits == dict.fromkeys(ids, 0)
        assert {r.status for r in rt.store.get_many(ids)} == {Status.EXPIRED}
        assert len(backend.revoked) == 8
        assert len(slack.calls()) == calls, "revoking made no Slack call"
        assert rt.redis.zcard(keys.expired_messages()) == 8
        assert DueQueue(rt.redis).score(EXPIRED_UPDATES) is not None, "the catch-up job is due"

        # First run: one digest for the channel, then one update; the next slot is not free yet.
        assert run_updates(rt) is False
        digests = [c for c in slack.calls("chat.postMessage") if "expired" in str(c.params.get("text"))]
        assert [c.params["text"] for c in digests] == ["8 grants expired in the last minute"]
        assert len(slack.calls("chat.update")) == 1
        unnamed = [k for k in jit_keys(rt.redis) if classify(k, key_shapes()) is None]
        assert unnamed == [], "every key the catch-up job writes is named by a helper in bot/store/keys.py"

        # Each later slot updates one more message, until all show their expiry.
        runs = 1
        while not run_updates(rt):
            rt.redis.delete(keys.update_slot())  # the next slot has come
            runs += 1
            assert runs < 20
    assert len(slack.calls("chat.update")) == 8 and runs == 8
    for rid in ids:
        assert "expired" in shown(slack, rid)
    assert not rt.redis.exists(keys.expired_messages())
    assert DueQueue(rt.redis).score(EXPIRED_UPDATES) is None, "nothing left: the job is finished"
    assert len([c for c in slack.calls("chat.postMessage") if "grants expired" in str(c.params.get("text"))]) == 1
    assert [e.body["event"] for e in rt.audit.entries_for_request(ids[0])][-1] == "grant.revoked"


def test_a_few_expiries_get_no_digest(posts_unpaced, rt, backend, slack):
    ids = active_with_messages(rt, backend, 2)
    with freeze_time(AFTER):
        rt.revokes.expire_many(ids, backend.backend_for)
        while not run_updates(rt):
            rt.redis.delete(keys.update_slot())
    assert not [c for c in slack.calls("chat.postMessage") if "expired" in str(c.params.get("text"))]
    assert all("expired" in shown(slack, rid) for rid in ids)


def test_a_message_slack_refuses_to_update_does_not_hold_up_the_others(posts_unpaced, rt, backend, slack):
    ids = active_with_messages(rt, backend, 3)
    slack.api_error("message_not_found", methods="chat.update", times=1)
    with freeze_time(AFTER):
        rt.revokes.expire_many(ids, backend.backend_for)
        while not run_updates(rt):
            rt.redis.delete(keys.update_slot())
    assert not rt.redis.exists(keys.expired_messages())
    assert sum("expired" in shown(slack, rid) for rid in ids) == 2


def test_expiries_are_never_early_and_a_failing_backend_fails_only_its_own(posts_unpaced, rt, backend, slack):
    ids = active_with_messages(rt, backend, 3)
    with freeze_time("2026-12-02 10:09:59"):
        waits = rt.revokes.expire_many(ids, backend.backend_for)
    assert all(w > 0 for w in waits.values()) and not backend.revoked

    real = backend.revoke

    def revoke(request, credential):
        if request.id == ids[1]:
            raise RuntimeError("target down")
        real(request, credential)

    backend.revoke = revoke
    with freeze_time(AFTER):
        waits = rt.revokes.expire_many(ids, backend.backend_for)
    assert isinstance(waits[ids[1]], RuntimeError) and waits[ids[0]] == waits[ids[2]] == 0
    assert [r.status for r in rt.store.get_many(ids)] == [Status.EXPIRED, Status.ACTIVE, Status.EXPIRED]
