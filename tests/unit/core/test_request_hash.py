"""A request's hash in Redis: what is vouched for reads back exactly, in every format a version wrote."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from bot.core.model import AccessRequest, Status

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


def test_what_a_token_vouched_for_reads_back_exactly_and_nothing_else():
    context = {**GITHUB, "ticket": "OPS-1"}  # `ticket` came from the body, not the token
    keys = tuple(sorted([*GITHUB, "requested_by"]))
    back = AccessRequest.from_hash(_stored(_request(context, keys, "octocat")))
    assert back.verified_keys == keys and "ticket" not in back.verified_keys
    assert back.context == context


def test_the_context_is_stored_without_spacing_and_the_spaced_form_earlier_versions_wrote_still_reads():
    h = _stored(_request(dict(GITHUB), (), None))
    assert h["context"] == json.dumps(GITHUB, sort_keys=True, separators=(",", ":"))
    assert AccessRequest.from_hash(h).context == GITHUB
    h["context"] = json.dumps(GITHUB, sort_keys=True)  # with json.dumps's default spacing
    assert AccessRequest.from_hash(h).context == GITHUB
