"""Fault 5: Slack down (5xx), slow (beyond the client's timeout) or rate-limiting (429 + Retry-After).

Messages and updates arrive once Slack recovers, per request in order, one post per request; approvals
given meanwhile still grant.
"""

from __future__ import annotations

import time

from faultkit import (
    approve,
    ask,
    assert_in_order,
    delivered_statuses,
    rdb,
    request_posts,
    settle_slack,
    wait_status,
)
from procs import Stack, wait_until


def _shows(stack: Stack, rid: str, status: str) -> bool:
    statuses = delivered_statuses(stack, rid)
    return bool(statuses) and statuses[-1] == status


def _message_text(stack: Stack, rid: str) -> str:
    ts = rdb(stack).hget(f"jit:req:{rid}", "message_ts")
    return stack.slack.message(ts)["text"] if ts else ""


def test_slack_down_then_back_delivers_everything_once_and_grants_meanwhile():
    with Stack() as stack:
        stack.serve()
        stack.worker()
        before, b_token = ask(stack, "deploy-prod", reason="fault 5: posted before the outage")
        stack.message_ts(before)

        stack.slack.fail_with(503)
        during, _ = ask(stack, "read-secret", reason="fault 5: asked during the outage")
        approve(stack, before, "U0LEAD1")
        approve(stack, before, "U0LEAD2")
        # The grant does not wait for Slack.
        assert stack.wait_status(before, b_token, {"active"}, timeout=30)["status"] == "active"
        wait_until(lambda: stack.slack.stats.failed >= 3, 30, message="the bot keeps trying Slack")
        assert request_posts(stack, during) == []

        stack.slack.clear_faults()
        wait_until(lambda: _shows(stack, before, "active"), 45, 0.1, "the update after the outage")
        wait_until(lambda: request_posts(stack, during), 45, 0.1, "the post after the outage")
        assert _message_text(stack, before).endswith("— active")
        assert _message_text(stack, during).endswith("— pending")
        for rid in (before, during):
            assert len(request_posts(stack, rid)) == 1, f"{rid} posted {len(request_posts(stack, rid))} times"
            assert_in_order(delivered_statuses(stack, rid))


def test_slack_rate_limiting_is_honoured_and_everything_is_delivered_once():
    with Stack() as stack:
        stack.serve()
        stack.worker()
        stack.slack.rate_limit(retry_after=2, times=3)
        reqs = [ask(stack, "quick", ttl="1m", reason=f"fault 5: rate limited #{i}") for i in range(3)]
        for rid, _ in reqs:
            stack.message_ts(rid, timeout=45)
        for rid, _ in reqs:
            approve(stack, rid)
        for rid, token in reqs:
            assert stack.wait_status(rid, token, {"active"}, timeout=30)["status"] == "active"
        for rid, _ in reqs:
            wait_until(lambda rid=rid: _shows(stack, rid, "active"), 45, 0.1, f"{rid} shown active")
            assert len(request_posts(stack, rid)) == 1
            assert_in_order(delivered_statuses(stack, rid))
        assert stack.slack.stats.rate_limited == 3


def test_slack_slower_than_the_client_timeout_still_ends_showing_the_latest_state():
    with Stack() as stack:
        stack.serve()
        stack.worker()
        rid, token = ask(stack, "deploy-prod", reason="fault 5: slow Slack")
        stack.message_ts(rid)
        settle_slack(stack)
        # The next update hangs for 15 s (the client gives up after 10 s, Slack applies it anyway).
        stack.slack.slow(15, methods="chat.update", times=1)
        injected = time.time()
        approve(stack, rid, "U0LEAD1")
        approve(stack, rid, "U0LEAD2")
        assert stack.wait_status(rid, token, {"active"}, timeout=30)["status"] == "active"
        # Everything that was in flight has landed, and the message shows the final state.
        wait_until(lambda: time.time() > injected + 16, 30, 0.2, "the slow update landed")
        wait_until(lambda: _shows(stack, rid, "active"), 45, 0.2, "message shows active")
        wait_until(
            lambda: not [m for m in rdb(stack).zrange("jit:due", 0, -1) if m == f"slack:{rid}"],
            30,
            0.2,
            "no Slack work left",
        )
        assert _message_text(stack, rid).endswith("— active"), delivered_statuses(stack, rid)
        assert len(request_posts(stack, rid)) == 1
        assert_in_order(delivered_statuses(stack, rid))
        late = [c for c in stack.slack.calls("chat.update") if c.ok and c.time >= injected + 14]
        assert late and late[-1].params["text"].endswith("— active"), "the late update was followed by the latest"
        wait_status(stack, rid, {"active"})


def test_slack_post_slower_than_the_client_timeout_is_not_posted_twice():
    with Stack() as stack:
        stack.serve()
        stack.worker()
        warm_up, _ = ask(stack, "read-secret", reason="fault 5: the worker is up")
        stack.message_ts(warm_up)
        settle_slack(stack)
        stack.slack.slow(11, methods="chat.postMessage", times=1)
        injected = time.time()
        rid, _ = ask(stack, "read-secret", reason="fault 5: slow first post")
        wait_until(lambda: request_posts(stack, rid), 45, 0.2, "posted")
        # the timed-out first call lands 11 s after it was sent; jit finds it instead of re-posting
        ts = wait_until(lambda: rdb(stack).hget(f"jit:req:{rid}", "message_ts"), 60, 0.2, "the post adopted")
        wait_until(lambda: time.time() > injected + 25, 30, 0.2, "any second attempt would have landed")
        posts = request_posts(stack, rid)
        assert len(posts) == 1 and posts[0]["ts"] == ts
