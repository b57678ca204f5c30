"""The readable sections of an evidence bundle come from the request's audit entries alone, so
verification can derive them again: verified claims apart from what the pipeline merely said,
how the request was decided, what became of the credential."""

from __future__ import annotations

from bot.commands.evidence import summarize


def row(seq: int, event: str, actor: str = "jit", outcome: str = "ok", **details) -> dict:
    return {
        "seq": seq,
        "event": event,
        "actor": actor,
        "outcome": outcome,
        "time": f"2026-03-01T10:00:{seq:02d}.000Z",
        "request_id": "r1",
        "action": "deploy-prod",
        "details": details,
    }


CREATED = row(
    1,
    "request.created",
    "pipeline:gh-deploy",
    reason="release",
    ttl_seconds=600,
    requested_by="alice",
    requester="U0ALICE",
    context={"repository": "acme/web", "ref": "refs/heads/main", "ticket": "OPS-1"},
    verified=True,
    verified_fields=["repository", "ref", "requested_by"],
    policy_sha256="f" * 64,
)


def test_verified_claims_are_told_apart_from_what_the_pipeline_said():
    s = summarize("r1", [CREATED])
    assert s["pipeline"] == {
        "name": "gh-deploy",
        "verified": True,
        "verified_claims": {"repository": "acme/web", "ref": "refs/heads/main", "requested_by": "alice"},
        "stated_context": {"ticket": "OPS-1"},
    }
    assert s["request"]["policy_sha256"] == "f" * 64 and s["outcome"] == "pending"
    assert s["decision"] is None and s["credential"] is None


def test_an_auto_approval_names_its_rule_and_an_expiry_ends_it():
    s = summarize(
        "r1",
        [
            CREATED,
            row(2, "request.approved", "auto", rule="main-branch", auto_approved=True),
            row(3, "grant.issued", backend="token", expires_at="2026-03-01T10:10:00.000Z", ttl_seconds=600),
            row(4, "grant.revoked", "expiry", backend="token", lateness_ms=3),
        ],
    )
    assert s["decision"]["how"] == "auto_approve" and s["decision"]["details"]["rule"] == "main-branch"
    assert s["approvals"] == [] and s["outcome"] == "expired"
    assert s["credential"]["revoke_confirmed_by_backend"] and s["credential"]["revoked_by"] == "expiry"


def test_break_glass_denial_failures_and_sessions():
    glass = summarize("r1", [CREATED, row(2, "request.approved", "U0SRE", break_glass=True, justification="p1")])
    assert glass["decision"]["how"] == "break_glass" and glass["decision"]["by"] == "U0SRE"
    denied = summarize("r1", [CREATED, row(2, "request.denied", "U0LEAD1", reason="no")])
    assert denied["decision"]["outcome"] == "denied" and denied["outcome"] == "denied" and denied["credential"] is None
    s = summarize(
        "r1",
        [
            CREATED,
            row(2, "approval.given", "U0LEAD1"),
            row(3, "request.approved", "U0LEAD1"),
            row(4, "grant.issued", outcome="late", backend="exec"),  # ended while the backend worked
            row(5, "session.started", "pipeline:gh-deploy", client="psql"),
            row(6, "revoke.attempt_failed", error="timeout"),
            row(7, "grant.revoked", "U0LEAD1", status="revoked"),
        ],
    )
    assert s["approvals"] == [{"by": "U0LEAD1", "at": "2026-03-01T10:00:02.000Z", "seq": 2}]
    assert s["credential"]["issued_at"] is None and s["credential"]["revoke_failures"][0]["seq"] == 6
    assert s["session"] == [
        {
            "event": "session.started",
            "by": "pipeline:gh-deploy",
            "at": "2026-03-01T10:00:05.000Z",
            "seq": 5,
            "details": {"client": "psql"},
        }
    ]
    assert s["outcome"] == "revoked"


def test_a_request_whose_creation_was_trimmed_away_still_summarizes():
    s = summarize("r1", [row(9, "grant.revoked", "expiry")])
    assert s["request"] is None and s["pipeline"] is None and s["outcome"] == "expired"


def test_extensions_move_the_expiry_and_a_release_is_the_revoke_asked():
    rows = [
        CREATED,
        row(2, "request.approved", "U0LEAD1"),
        row(3, "grant.issued", backend="exec", expires_at="2026-03-01T10:10:03.000Z", ttl_seconds=600),
        row(4, "grant.extended", "pipeline:gh-deploy", new_expires_at="2026-03-01T10:20:03.000Z", added_seconds=600),
        row(5, "grant.extended", "U0LEAD2", new_expires_at="2026-03-01T10:25:03.000Z", added_seconds=300),
        row(6, "grant.released", "U0ALICE"),
    ]
    cred = summarize("r1", rows)["credential"]
    assert cred["expires_at"] == "2026-03-01T10:25:03.000Z"
    assert [e["by"] for e in cred["extensions"]] == ["pipeline:gh-deploy", "U0LEAD2"]
    assert cred["revoke_requested"]["by"] == "U0ALICE"
