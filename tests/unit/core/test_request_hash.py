"""A request's hash in Redis: what is vouched for reads back exactly, however compactly it is written."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from bot.core.model import ALL_VERIFIED, AccessRequest, Status

GITHUB = {
    "repository": "octo-org/octo-repo",
    "ref": "refs/heads/main",
    "run_id": "9876543210",
    "run_url": "https://github.com/octo-org/octo-repo/actions/runs/9876543210",
}


def _request(context: dict, verified_keys: tuple[str, ...], requested_by: str | None) -> AccessRequest:
    t = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    return AccessRequest(
        id="r1",
        action="deploy-prod",
        pipeline="ci",
        reason="release 4.2",
        ttl=timedelta(minutes=15),
        status=Status.PENDING,
        created_at=t,
        pending_until=t + timedelta(minutes=30),
        approvals_required=1,
        channel="C1",
        requested_by=requested_by,
        context=context,
        verified=bool(verified_keys),
        verified_keys=verified_keys,
    )


def _stored(req: AccessRequest) -> dict[str, str]:
    """The hash as the store writes it: no empty fields."""
    return {k: v for k, v in req.to_hash().items() if v != ""}


def test_a_request_whose_token_vouches_for_everything_stores_one_mark_and_reads_back_every_key():
    keys = tuple(sorted([*GITHUB, "requested_by"]))
    h = _stored(_request(dict(GITHUB), keys, "octocat"))
    assert h["verified_keys"] == ALL_VERIFIED
    assert AccessRequest.from_hash(h).verified_keys == keys


def test_a_key_only_the_pipeline_said_is_never_read_back_as_verified():
    context = {**GITHUB, "ticket": "OPS-1"}  # `ticket` came from the body, not the token
    keys = tuple(sorted([*GITHUB, "requested_by"]))
    h = _stored(_request(context, keys, "octocat"))
    assert h["verified_keys"] != ALL_VERIFIED
    back = AccessRequest.from_hash(h)
    assert back.verified_keys == keys and "ticket" not in back.verified_keys


def test_a_requester_the_token_did_not_name_is_never_read_back_as_verified():
    keys = tuple(sorted(GITHUB))  # no actor claim: the requester is what the body said
    h = _stored(_request(dict(GITHUB), keys, "mallory"))
    assert h["verified_keys"] != ALL_VERIFIED
    assert "requested_by" not in AccessRequest.from_hash(h).verified_keys


def test_an_unverified_request_reads_back_with_nothing_verified():
    for context, by in (({}, None), ({"repository": "o/r"}, "someone")):
        h = _stored(_request(context, (), by))
        assert "verified_keys" not in h
        assert AccessRequest.from_hash(h).verified_keys == ()


def test_hashes_earlier_versions_wrote_read_as_before():
    h = _stored(_request(dict(GITHUB), tuple(sorted(GITHUB)), "octocat"))
    h["verified_keys"] = "repository,run_id"  # an explicit list, as every earlier version wrote it
    h["context"] = json.dumps(GITHUB, sort_keys=True)  # with json.dumps's default spacing
    back = AccessRequest.from_hash(h)
    assert back.verified_keys == ("repository", "run_id")
    assert back.context == GITHUB


def test_the_context_is_stored_without_spacing():
    h = _stored(_request(dict(GITHUB), (), None))
    assert h["context"] == json.dumps(GITHUB, sort_keys=True, separators=(",", ":"))
    assert AccessRequest.from_hash(h).context == GITHUB
