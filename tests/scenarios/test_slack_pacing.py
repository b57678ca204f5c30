"""Slack posts are paced per channel: a burst arrives complete, in order, once each, without a 429 storm."""

from __future__ import annotations

import json
from datetime import timedelta

import redis as redislib
from fakes.slack import block_action
from freezegun import freeze_time
from procs import Stack, wait_until
from support import WEB_TOKEN, clock_start

DIGEST = "new access requests"


def request_posts(slack, channel):
    """Top-level request messages in `channel` (not digests, not thread replies), in posting order."""
    return [
        c
        for c in slack.calls("chat.postMessage")
        if c.ok
        and c.params.get("channel") == channel
        and not c.params.get("thread_ts")
        and c.params.get("text", "").startswith("Access request ")
    ]


def rid_of(call):
    return call.params["text"].split()[2].rstrip(":")  # "Access request <id>: ..."


def test_a_burst_to_one_channel_arrives_whole_in_order_once_each():
    with Stack(extra_env={"JIT_LOG_LEVEL": "WARNING"}) as stack:
        stack.slack.enforce_channel_rate(per_second=1)
        stack.serve()
        stack.worker(concurrency=3)
        ids = []
        for i in range(20):
            r = stack.ask("read-secret", WEB_TOKEN, reason=f"burst {i}")
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])

        wait_until(
            lambda: len(request_posts(stack.slack, "C0APPROVALS")) >= 20, timeout=120, message="all 20 request messages"
        )
        # every request posted leaves the channel's outbox, and only its head is ever posted: once
        # the outbox is empty, no post of these requests is still on its way
        outbox = redislib.Redis.from_url(stack.redis.url)
        wait_until(lambda: not outbox.exists("jit:slack:outbox:C0APPROVALS"), timeout=60, message="an empty outbox")
        posts = request_posts(stack.slack, "C0APPROVALS")
        posted = [rid_of(c) for c in posts]
        assert sorted(posted) == sorted(ids)  # nothing lost, nothing twice
        assert posted == ids  # in the order they were made
        assert stack.slack.stats.rate_limited <= 2
        # approvals still work on a request posted late in the burst
        last = ids[-1]
        ts = stack.message_ts(last)
        resp = stack.slack_post(block_action("jit_approve", last, "U0LEAD1", channel="C0APPROVALS", message_ts=ts))
        assert resp.status_code == 200
        assert stack.wait_status(last, WEB_TOKEN, {"active"})["status"] == "active"


def test_many_waiting_get_a_digest_first_then_their_own_messages(jit, slack):
    ids = [jit.ask("read-secret", reason=f"release {i}")["id"] for i in range(8)]
    jit.drain(lambda: len(request_posts(slack, "C0APPROVALS")) == 8, what="8 request messages")
    posts = [c for c in slack.calls("chat.postMessage") if c.ok and c.params["channel"] == "C0APPROVALS"]
    digests = [c for c in posts if DIGEST in c.params["text"]]
    assert len(digests) == 1
    listed = json.dumps(digests[0].params["blocks"])
    # the digest takes the first slot and lists all 8; their own messages follow
    assert all(rid in listed for rid in ids) and "8 new access requests" in listed
    assert posts[0] is digests[0]
    assert [rid_of(c) for c in request_posts(slack, "C0APPROVALS")] == ids
    # each request's own message carries its buttons, and they work
    msg = slack.message(jit.rt.store.get(ids[5]).message_ts)
    assert "Approve" in json.dumps(msg["blocks"])
    jit.approve(ids[5], "U0LEAD1")
    jit.drain(lambda: jit.status(ids[5]).get_json()["status"] == "active", what="approval")
    # nothing is re-sent to bring a message up to date that already is
    assert not [c for c in slack.calls("chat.update") if c.params["ts"] != msg["ts"]]


def ask_one_ms_apart(jit, clock, n: int, action: str = "read-secret", what: str = "spacing") -> list[str]:
    """n requests, each made a millisecond after the one before (the frozen clock moves only by hand)."""
    ids = []
    for i in range(n):
        ids.append(jit.ask(action, reason=f"{what} {i}")["id"])
        clock.tick(timedelta(milliseconds=1))
    return ids


def test_a_later_digest_lists_only_requests_no_digest_listed(jit, slack):
    def digests():
        return [c for c in slack.calls("chat.postMessage") if c.ok and DIGEST in c.params["text"]]

    with freeze_time(clock_start()) as clock:
        first = ask_one_ms_apart(jit, clock, 8, what="first")
        jit.work()
        assert len(digests()) == 1
        few = ask_one_ms_apart(jit, clock, 3, what="few")  # not more than JIT_SLACK_DIGEST_AFTER (5) new
        clock.tick(timedelta(seconds=1))
        jit.work()
        assert len(digests()) == 1, "a backlog a digest listed is not listed again"
        more = ask_one_ms_apart(jit, clock, 6, what="more")
        clock.tick(timedelta(seconds=1))
        jit.work()
        assert len(digests()) == 2
        listed = json.dumps(digests()[1].params["blocks"])
        assert all(rid in listed for rid in few + more) and "9 new access requests" in listed
        assert not any(rid in listed for rid in first)


def test_posts_to_one_channel_are_spaced(jit, slack):
    with freeze_time(clock_start()) as clock:
        ids = ask_one_ms_apart(jit, clock, 3)
        jit.work()
        assert [rid_of(c) for c in request_posts(slack, "C0APPROVALS")] == ids[:1]
        for n in (2, 3):
            clock.tick(timedelta(milliseconds=999))  # a second after the last post, less a millisecond
            jit.work()
            assert len(request_posts(slack, "C0APPROVALS")) == n - 1, "not before its slot"
            clock.tick(timedelta(milliseconds=1))
            jit.work()
            assert [rid_of(c) for c in request_posts(slack, "C0APPROVALS")] == ids[:n]


def test_other_channels_are_not_held_up(jit, slack):
    with freeze_time(clock_start()) as clock:
        ask_one_ms_apart(jit, clock, 4, what="busy")
        jit.ask("deploy-prod")  # C0PROD
        jit.work()
        # C0PROD's post did not wait behind C0APPROVALS's queue (paced at one a second)
        assert len(request_posts(slack, "C0PROD")) == 1
        assert len(request_posts(slack, "C0APPROVALS")) == 1


def test_retry_after_is_honoured(jit, slack):
    slack.rate_limit(retry_after=2, times=1, methods="chat.postMessage")
    with freeze_time(clock_start()) as clock:
        ids = ask_one_ms_apart(jit, clock, 2, what="limited")
        jit.work()
        assert [c.status for c in slack.calls("chat.postMessage")] == [429]
        clock.tick(timedelta(milliseconds=1998))  # Retry-After: 2 (s), from the 429
        jit.work()
        assert len(slack.calls("chat.postMessage")) == 1, "nothing posted before Retry-After ran out"
        clock.tick(timedelta(milliseconds=2))
        jit.work()
        clock.tick(timedelta(seconds=1))
        jit.work()
        assert [rid_of(c) for c in request_posts(slack, "C0APPROVALS")] == ids


def test_a_request_gone_before_its_post_does_not_block_the_channel(jit, slack):
    with freeze_time(clock_start()) as clock:
        ids = ask_one_ms_apart(jit, clock, 5, what="gone")
        jit.work()  # the first is posted, the others wait for their slots (one a second)
        gone = ids[3]
        assert jit.rt.redis.zscore("jit:slack:outbox:C0APPROVALS", gone) is not None
        jit.rt.redis.delete(f"jit:req:{gone}")  # e.g. retention dropped it while it waited
        for _ in range(4):
            clock.tick(timedelta(seconds=1))
            jit.work()
        assert [rid_of(c) for c in request_posts(slack, "C0APPROVALS")] == [i for i in ids if i != gone]
        assert not jit.rt.redis.exists("jit:slack:outbox:C0APPROVALS")


def test_a_message_slack_refuses_does_not_hold_up_the_channel(jit, slack):
    slack.api_error("invalid_blocks", methods="chat.postMessage", times=1)
    ids = [jit.ask("read-secret", reason=f"refused {i}")["id"] for i in range(3)]
    jit.drain(
        lambda: len(request_posts(slack, "C0APPROVALS")) == 3, timeout=60, what="all three, the refused one retried"
    )
    posted = [rid_of(c) for c in request_posts(slack, "C0APPROVALS")]
    assert sorted(posted) == sorted(ids)
    assert posted[:2] == ids[1:]  # the others went first; the refused one came back after them


def test_a_slack_job_with_nothing_new_for_its_message_renders_nothing(jit, slack, monkeypatch):
    """A request's own `slack:` job often finds its message posted already (by the job that had the
    channel's slot): the message shows the request's current revision, so it is not rendered again.
    Anything that changes what the message shows moves the revision on, and then it is."""
    from workers.jobs.notify import message

    rid = jit.ask("read-secret", reason="revision")["id"]
    jit.work()
    ts = jit.rt.store.get(rid).message_ts
    assert ts
    rendered = []
    real = message.render
    monkeypatch.setattr(message, "render", lambda rt, req: rendered.append(req.id) or real(rt, req))
    message.on_change(jit.rt, rid, "token")
    assert rendered == []
    jit.rt.store.message_owed(rid)  # a gate's state changed (workers/jobs/gate.py)
    message.on_change(jit.rt, rid, "token")
    assert rendered == [rid]
    jit.approve(rid, "U0LEAD1")  # a transition: rendered again, and Slack hears of it
    jit.drain(lambda: jit.status(rid).get_json()["status"] == "active", what="approval")
    # (DECISION_MESSAGE_MS after the click, with the grant that followed it)
    jit.drain(lambda: [c for c in slack.calls("chat.update") if c.params["ts"] == ts], what="the update")
    assert rendered.count(rid) >= 2


def test_an_approval_and_the_grant_after_it_are_one_message_update_off_the_credential_path(jit, slack):
    """The approval's message update waits DECISION_MESSAGE_MS: the grant, milliseconds later, is
    shown in the same update, and no Slack work runs between the click and the credential."""
    from bot.core.clock import now_ms
    from bot.store.due import DueQueue
    from bot.store.requests import DECISION_MESSAGE_MS
    from workers.queue.dispatch import QUEUES
    from workers.queue.worker import JitWorker

    rid = jit.ask("read-secret", reason="one update")["id"]
    jit.work()
    ts = jit.rt.store.get(rid).message_ts
    assert ts
    clicked = now_ms()
    jit.approve(rid, "U0LEAD1")
    assert DueQueue(jit.rt.redis).score(f"slack:{rid}") >= clicked + DECISION_MESSAGE_MS  # not kicked at once
    # the grant job (kicked at once) runs; the message is not due yet
    JitWorker(list(QUEUES), connection=jit.rt.raw_redis, parts=jit.rt).work(burst=True, logging_level="ERROR")
    assert jit.rt.store.get(rid).status.value == "active"
    assert [c for c in slack.calls("chat.update") if c.params["ts"] == ts] == []
    jit.work()  # what falls due within DECISION_MESSAGE_MS: the message, once
    updates = [c for c in slack.calls("chat.update") if c.params["ts"] == ts]
    assert len(updates) == 1, "approved and active shown in one update"
    assert ":white_check_mark: *Active*" in json.dumps(updates[0].params)
    assert now_ms() - clicked >= DECISION_MESSAGE_MS


def _count_runs(monkeypatch):
    """How often each due member's handler ran (in-process, through the real job wrapper)."""
    import workers.jobs as jobs

    runs: dict[str, int] = {}
    for kind, handler in list(jobs.HANDLERS.items()):

        def counted(rt, rid, token, kind=kind, handler=handler):
            runs[f"{kind}:{rid}"] = runs.get(f"{kind}:{rid}") or 0
            runs[f"{kind}:{rid}"] += 1
            return handler(rt, rid, token)

        monkeypatch.setitem(jobs.HANDLERS, kind, counted)
    return runs


def test_a_burst_is_posted_by_the_channel_in_turn_with_no_job_per_request(jit, slack, monkeypatch):
    """A burst's first posts are the channel's one item's to make: a new request owes no job of its
    own (none races for the channel's head, none comes back to find its message posted by another)."""
    runs = _count_runs(monkeypatch)
    with freeze_time(clock_start()) as clock:
        ids = ask_one_ms_apart(jit, clock, 4, what="turn")
        for _ in range(4):
            jit.work()
            clock.tick(timedelta(seconds=1))
    assert [rid_of(c) for c in request_posts(slack, "C0APPROVALS")] == ids
    assert not [m for m in runs if m.startswith("slack:")], runs
    assert all(jit.rt.redis.zscore("jit:due", f"remind:{rid}") for rid in ids)  # its reminder is set
    assert runs["post:C0APPROVALS"] == 4  # one post per slot, a second apart
    assert not jit.rt.redis.zscore("jit:due", "post:C0APPROVALS")  # done once the outbox is empty
    assert not jit.rt.redis.exists("jit:slack:outbox:C0APPROVALS")


def test_a_request_that_comes_in_as_the_channel_finishes_is_still_posted(jit, slack, monkeypatch):
    """The channel's item found its outbox empty; a request made at that moment finds the item still
    queued and does not arm it again. Finishing looks once more, so it is posted all the same."""
    from workers.jobs.notify import message, pacing

    first = jit.ask("read-secret", reason="before")["id"]
    late: list[str] = []
    real = pacing.ChannelPacer.take_turn

    def take_turn(self, channel):
        turn = real(self, channel)
        if turn.kind == "empty" and not late:
            rid = jit.ask("read-secret", reason="just as it finished")["id"]
            message.on_change(jit.rt, rid, "its-claim")  # its own job, now: queued, nothing armed
            jit.rt.redis.zrem("jit:due", f"slack:{rid}")  # ... and done
            late.append(rid)
        return turn

    monkeypatch.setattr(pacing.ChannelPacer, "take_turn", take_turn)
    jit.drain(lambda: len(request_posts(slack, "C0APPROVALS")) == 2, timeout=30, what="both posted")
    assert [rid_of(c) for c in request_posts(slack, "C0APPROVALS")] == [first, late[0]]


def test_a_message_slack_keeps_refusing_backs_off_on_its_own_while_the_channel_goes_on(jit, slack):
    slack.api_error("invalid_blocks", methods="chat.postMessage", times=3)

    def refused():
        return len([c for c in slack.calls("chat.postMessage") if not c.ok])

    with freeze_time(clock_start()) as clock:
        bad = jit.ask("read-secret", reason="refused")["id"]
        jit.work()
        assert refused() == 1  # back in 1 s
        clock.tick(timedelta(seconds=1))
        jit.work()
        assert refused() == 2  # back in 2 s
        clock.tick(timedelta(milliseconds=1999))
        jit.work()
        assert refused() == 2, "not before its backoff"
        clock.tick(timedelta(milliseconds=1))
        jit.work()
        assert refused() == 3  # back in 4 s
        good = jit.ask("read-secret", reason="meanwhile")["id"]
        clock.tick(timedelta(seconds=1))  # the channel's next slot
        jit.work()
        assert [rid_of(c) for c in request_posts(slack, "C0APPROVALS")] == [good]  # not held up
        clock.tick(timedelta(milliseconds=2999))
        jit.work()
        assert [rid_of(c) for c in request_posts(slack, "C0APPROVALS")] == [good], "not before its backoff"
        clock.tick(timedelta(milliseconds=1))
        jit.work()
    assert [rid_of(c) for c in request_posts(slack, "C0APPROVALS")] == [good, bad]
    assert refused() == 3


def test_a_request_job_that_finds_its_first_post_being_made_comes_back_to_update_it(jit, slack):
    """The channel's item may be posting the message from the state before this job's transition:
    the job must not call it done, but come back and bring the message up to date."""
    import pytest

    from bot.store import keys
    from workers.jobs.notify import message
    from workers.queue.retry import RetryLater

    rid = jit.ask("read-secret", reason="being posted")["id"]
    jit.rt.redis.set(keys.slack_lock(rid), "the-channel-item", px=30_000)  # mid-post
    with pytest.raises(RetryLater):
        message.on_change(jit.rt, rid, "its-claim")
    jit.rt.redis.delete(keys.slack_lock(rid))
    jit.drain(lambda: len(request_posts(slack, "C0APPROVALS")) == 1, what="the post")


def test_a_channel_that_posts_again_backs_off_from_the_start_after_its_next_failure(jit, slack):
    """The channel's poster is one due item for as long as its outbox waits: a failure backs off the
    whole channel, and a post that goes out again starts the count over (else every later blip
    in a long burst would silence the channel for longer, up to a minute)."""
    with freeze_time(clock_start()) as clock:
        ids = ask_one_ms_apart(jit, clock, 3, what="blip")
        slack.fail_with(503, times=1, methods="chat.postMessage")
        jit.work()  # the first post fails: the channel backs off 1 s
        assert request_posts(slack, "C0APPROVALS") == []
        clock.tick(timedelta(seconds=1))
        jit.work()
        assert [rid_of(c) for c in request_posts(slack, "C0APPROVALS")] == ids[:1]
        slack.fail_with(503, times=1, methods="chat.postMessage")
        clock.tick(timedelta(seconds=1))
        jit.work()  # the next slot's post fails: 1 s again, not 2
        clock.tick(timedelta(seconds=1))
        jit.work()
        assert [rid_of(c) for c in request_posts(slack, "C0APPROVALS")] == ids[:2]


def test_a_channel_whose_poster_was_dropped_gets_one_again(jit, slack):
    """An older worker knows no `post:` items and drops one it claims: the outbox would wait
    until some later request armed a poster again. Every worker's upkeep re-arms it."""
    from workers.jobs.notify.pacing import rearm_posters

    rid = jit.ask("read-secret", reason="dropped poster")["id"]
    jit.rt.redis.zrem("jit:due", "post:C0APPROVALS")  # what the older worker's "unknown member" did
    jit.work()
    assert request_posts(slack, "C0APPROVALS") == []
    assert rearm_posters(jit.rt) == ["C0APPROVALS"]
    jit.work()
    assert [rid_of(c) for c in request_posts(slack, "C0APPROVALS")] == [rid]
    assert rearm_posters(jit.rt) == []  # nothing waits: nothing to do
