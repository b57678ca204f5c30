"""The gate rules: which job's token names the approved run, and what the platform is told."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.core.gates import binding_mismatch, gate_id, run_group, run_key, verdict
from bot.core.model import AccessRequest, Status

T0 = datetime(2024, 5, 2, 10, 0, tzinfo=UTC)
GH = {
    "repository": "acme/web",
    "repository_id": "1296269",
    "run_id": "30433642",
    "run_attempt": "1",
    "environment": "production",
    "commit": "6dcb09b5b57875f334f61aebed695e2e4193db5e",
}
GL = {
    "project_id": "46573356",
    "pipeline_id": "1519139981",
    "job_id": "8222997048",
    "environment": "production",
    "commit": "8fe1b322a576d59fe6257052a4107df7dc1b8c78",
}


def test_the_same_run_matches_and_every_other_is_named():
    assert binding_mismatch("github", GH, {**GH, "environment": "Production"}) is None  # GitHub ignores case
    assert binding_mismatch("gitlab", GL, dict(GL)) is None
    for key in ("repository_id", "run_id", "run_attempt", "environment", "commit"):
        assert key in binding_mismatch("github", GH, {**GH, key: "other"})
        assert "has no" in binding_mismatch("github", GH, {k: v for k, v in GH.items() if k != key})
    for key in ("project_id", "pipeline_id", "job_id", "environment", "commit"):
        assert key in binding_mismatch("gitlab", GL, {**GL, key: "9"})
    # a record missing a key never matches, whatever the token says
    assert binding_mismatch("github", {k: v for k, v in GH.items() if k != "commit"}, GH) is not None


def test_a_token_is_looked_up_by_its_run_only_when_it_names_one():
    assert run_key("github", GH) == ("github", "1296269", "30433642", "1", "production")
    assert run_key("github", {**GH, "environment": "PRODUCTION"}) == run_key("github", GH)
    assert run_key("github", {k: v for k, v in GH.items() if k != "run_attempt"}) is None
    assert run_key("gitlab", GL) == ("gitlab", "46573356", "8222997048")
    assert run_group(GH) == ("github", "1296269", "30433642", "1")
    assert gate_id("github", 1296269, 145988746) == "gh-1296269-145988746"


def request(status: Status, **kw) -> AccessRequest:
    return AccessRequest(
        id="0123456789abcdef",
        action="deploy-prod",
        pipeline="web-production",
        reason="deploy",
        ttl=timedelta(minutes=10),
        status=status,
        created_at=T0,
        pending_until=T0 + timedelta(minutes=20),
        approvals_required=2,
        channel="C0APPROVALS",
        **kw,
    )


def name(uid: str) -> str:
    return {"U0ALICE": "alice (U0ALICE)"}.get(uid, uid)


def test_undecided_requests_are_looked_at_again_later():
    assert verdict(request(Status.PENDING), T0, name).wait_ms == 20 * 60_000 + 5_000
    assert verdict(request(Status.PENDING), T0 + timedelta(hours=1), name).wait_ms == 1000
    approved = verdict(request(Status.APPROVED), T0, name)
    assert approved.state is None and approved.wait_ms > 0  # told once the credential exists


@pytest.mark.parametrize(
    ("status", "kw", "state", "words"),
    [
        (Status.ACTIVE, {"approvals": [("U0LEAD1", T0), ("U0ALICE", T0)]}, "approved", ["U0LEAD1", "alice (U0ALICE)"]),
        (Status.ACTIVE, {"decided_by": "auto"}, "approved", ["auto-approval rule"]),
        (Status.DENIED, {"decided_by": "U0LEAD1", "deny_reason": "freeze"}, "rejected", ["U0LEAD1", "freeze"]),
        (Status.TIMED_OUT, {}, "rejected", ["decided in time", "20m"]),
        (Status.FAILED, {"error": "target down"}, "rejected", ["could not be issued", "Slack message"]),
        (Status.EXPIRED, {}, "rejected", ["ended before"]),
    ],
)
def test_each_end_tells_the_platform_why(status, kw, state, words):
    v = verdict(request(status, **kw), T0, name)
    assert v.state == state and v.wait_ms == 0
    assert all(w in v.comment for w in words), v.comment
    assert "0123456789abcdef" in v.comment


def test_a_backends_error_text_stays_off_the_deployment_page():
    """The deployment page may be public (an open-source repository); a backend's error (an exec
    command's last stderr line) is for approvers, on the Slack message and in the audit trail."""
    v = verdict(request(Status.FAILED, error="psql: password authentication failed for user ci_admin"), T0, name)
    assert v.state == "rejected" and "ci_admin" not in v.comment and "psql" not in v.comment


def test_a_cancelled_request_owes_the_platform_nothing():
    v = verdict(request(Status.CANCELLED), T0, name)
    assert v.state is None and v.wait_ms == 0
