"""bot/decision/slack/views/answers.py: the `/jit status` overview stays within Slack's limits
however much is open, and says what it left out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from unit_support import block_text

from bot.core.model import AccessRequest, Status
from bot.decision.slack.views.answers import LIST_CAP, MAX_BLOCKS, overview

T = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


def request(i: int, status: Status) -> AccessRequest:
    return AccessRequest(
        id=f"r{i:015d}",
        action="deploy-prod",
        pipeline="web-ci",
        reason="release",
        ttl=timedelta(minutes=15),
        status=status,
        created_at=T,
        pending_until=T + timedelta(minutes=30),
        approvals_required=2,
        channel="C0PROD",
        expires_at=T + timedelta(minutes=15) if status == Status.ACTIVE else None,
    )


def test_long_lists_are_capped_and_the_rest_counted():
    reqs = [request(i, Status.PENDING) for i in range(LIST_CAP + 3)]
    reqs += [request(100 + i, Status.ACTIVE) for i in range(LIST_CAP + 5)]
    blocks = overview(reqs, unread=7)
    text = block_text(blocks)
    assert len(blocks) <= MAX_BLOCKS
    assert f"*Pending* ({LIST_CAP + 3})" in text and f"*Active grants* ({LIST_CAP + 5})" in text
    assert "…and 3 more pending (oldest not shown)" in text
    assert "…and 5 more active (oldest not shown)" in text
    assert "…and 7 older open requests not counted above" in text
    assert reqs[LIST_CAP - 1].id in text and reqs[LIST_CAP].id not in text


def test_an_approved_request_is_listed_as_issuing():
    text = block_text(overview([request(1, Status.APPROVED)], unread=0))
    assert "(approved, issuing…)" in text


def test_nothing_open():
    assert block_text(overview([], unread=0)) == "Nothing pending and no active grants."
