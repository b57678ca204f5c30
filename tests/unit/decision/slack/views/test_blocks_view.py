"""bot/decision/slack/views/blocks.py: what the request message tells approvers beyond the
request — which facts a token vouches for, a break-glass request, an unknown requester
(test_slack_rendering.py covers hostile text)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from unit_support import block_text

from bot.core.model import AccessRequest, Status
from bot.decision.slack.views.blocks import APPROVE, BREAK_GLASS, DENY, request_blocks

T = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


def request(**over) -> AccessRequest:
    fields = {
        "id": "0123456789abcdef",
        "action": "deploy-prod",
        "pipeline": "web-ci",
        "reason": "release 4.2",
        "ttl": timedelta(minutes=15),
        "status": Status.PENDING,
        "created_at": T,
        "pending_until": T + timedelta(minutes=30),
        "approvals_required": 2,
        "channel": "C0PROD",
    }
    return AccessRequest(**{**fields, **over})


def buttons(blocks: list[dict]) -> list[str]:
    return [e["action_id"] for b in blocks if b["type"] == "actions" for e in b["elements"]]


def test_a_verified_request_marks_what_the_token_vouches_for_and_what_the_pipeline_said():
    req = request(
        requested_by="octocat",
        context={"repository": "acme/web", "ref": "refs/heads/main", "environment": "prod"},
        verified=True,
        verified_keys=("repository", "requested_by"),
    )
    fields = [f["text"] for b in request_blocks(req) if b["type"] == "section" for f in b.get("fields", [])]
    by_title = {f.split("\n", 1)[0]: f for f in fields}
    assert by_title["*Repository*"].endswith(":lock: _verified_")
    assert by_title["*Requested by*"].endswith(":lock: _verified_")
    assert by_title["*Ref*"].endswith("_(said by the pipeline, unverified)_")
    assert by_title["*Environment*"].endswith("_(said by the pipeline, unverified)_")


def test_an_unverified_request_makes_no_claim_either_way():
    text = block_text(request_blocks(request(requested_by="alice", context={"ref": "main"})))
    assert "verified" not in text


def test_a_break_glass_request_offers_no_approve_button():
    blocks = request_blocks(request(), break_glass_requested=True)
    assert buttons(blocks) == [DENY, BREAK_GLASS]
    assert "*Break glass requested*" in block_text(blocks)
    assert buttons(request_blocks(request(), break_glass=True)) == [APPROVE, DENY, BREAK_GLASS]


def test_an_unknown_requester_is_flagged_while_pending():
    flagged = block_text(request_blocks(request(), self_approval="unknown_requester"))
    assert "*The requester is not a known person*" in flagged
    assert "not a known person" not in block_text(request_blocks(request(), self_approval="enforced"))
    approved = request(status=Status.APPROVED)
    assert "not a known person" not in block_text(request_blocks(approved, self_approval="unknown_requester"))


def test_the_status_says_when_a_grant_ends_with_its_window_and_while_it_is_being_revoked():
    active = request(status=Status.ACTIVE, issued_at=T, expires_at=T + timedelta(minutes=5))
    assert "cut to end with its change window" in block_text(request_blocks(active, cut_by_window=True))
    assert "cut to end" not in block_text(request_blocks(active))
    revoking = request(status=Status.REVOKED, revoked_by="U0LEAD1", revoke_pending=True)
    assert ":hourglass: *Revoking the credential*" in block_text(request_blocks(revoking))
