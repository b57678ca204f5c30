"""The session's Slack text: the thread line for each way a grant ends, the transcript snippet."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from bot.core.model import AccessRequest, Status
from bot.decision.slack.views.session import code_block, session_line, spoken, transcript_message

T0 = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
RECORD = {"duration_ms": 133_000, "exit_code": 0, "run": "42", "output_lines": 2, "transcript": "a\nb\n"}


def ended(status: Status, revoked_by: str | None, used: timedelta) -> AccessRequest:
    return AccessRequest(
        id="r1",
        action="db",
        pipeline="web-ci",
        reason="x",
        ttl=timedelta(minutes=15),
        status=status,
        created_at=T0,
        pending_until=T0 + timedelta(minutes=30),
        approvals_required=1,
        channel="C0",
        issued_at=T0,
        expires_at=T0 + timedelta(minutes=15),
        revoked_by=revoked_by,
        revoked_at=T0 + used,
    )


def test_spoken_durations():
    assert [spoken(s) for s in (0, 45, 60, 133, 767, 3600, 3900)] == [
        "0 s",
        "45 s",
        "1 m",
        "2 m 13 s",
        "12 m 47 s",
        "1 h",
        "1 h 5 m",
    ]


def test_the_line_for_a_pipeline_release():
    req = ended(Status.REVOKED, "pipeline:web-ci", timedelta(minutes=2, seconds=13))
    assert session_line(req, RECORD) == "Used 2 m 13 s by run 42 · exit 0 · released 12 m 47 s early"


def test_the_line_for_an_approvers_revoke_and_an_expiry():
    req = ended(Status.REVOKED, "U0LEAD1", timedelta(minutes=5))
    line = session_line(req, {**RECORD, "exit_code": 143, "ended_by": "grant_end"})
    assert line == (
        "Used 2 m 13 s by run 42 · exit 143 · stopped when the grant ended · revoked by <@U0LEAD1> 10 m early"
    )
    req = ended(Status.EXPIRED, "expiry", timedelta(minutes=15))
    assert session_line(req, {**RECORD, "run": None, "runner": "runner-7"}).endswith("· exit 0 · expired")
    assert session_line(req, {**RECORD, "run": None, "runner": "runner-7"}).startswith("Used 2 m 13 s on runner-7")


def test_the_snippet_escapes_and_keeps_the_tail():
    block, cut = code_block("<!channel> ``` &amp\n", 100)
    assert block == "```&lt;!channel&gt; ˋˋˋ &amp;amp```" and not cut
    block, cut = code_block("".join(f"line {i}\n" for i in range(1000)), 200)
    assert cut and block.endswith("line 999```") and len(block) <= 200
    assert transcript_message(RECORD).startswith("Transcript (masked, 2 lines):\n```a\nb```")
