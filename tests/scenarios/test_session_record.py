"""`POST /v1/requests/{id}/session`: the request's own token only, once, after the grant ended, within
its cap; anything else is a clear 4xx and changes nothing. What is kept: sealed beside the request,
its digest in the audit trail, its line in the thread, its summary in `/jit audit <id>`."""

from __future__ import annotations

import hashlib
import json

import pytest
from fakes.slack import slash_command
from support import OTHER_TOKEN, WEB_TOKEN

from bot.store import keys

TRANSCRIPT = "migrating…\nuser *** connected\ndone\n"


def body(**over):
    out = {
        "started_at": "2026-11-30T10:00:00.000Z",
        "ended_at": "2026-11-30T10:02:13.000Z",
        "exit_code": 0,
        "duration_ms": 133_000,
        "output_bytes": 64,
        "output_lines": 3,
        "transcript": TRANSCRIPT,
        "transcript_sha256": hashlib.sha256(TRANSCRIPT.encode()).hexdigest(),
        "ended_by": "command",
        "runner": "runner-7",
    }
    out.update(over)
    if "transcript" in over and "transcript_sha256" not in over:
        out["transcript_sha256"] = hashlib.sha256(over["transcript"].encode()).hexdigest()
    return out


def post(jit, rid, data, token=None, **kw):
    token = token or jit.follow_token(rid, WEB_TOKEN)
    return jit.http.post(f"/v1/requests/{rid}/session", json=data, headers={"Authorization": f"Bearer {token}"}, **kw)


def active(jit, **ask):
    rid = jit.ask("read-secret", reason="report", context={"run_url": "https://ci.example/acme/app/runs/42"}, **ask)[
        "id"
    ]
    jit.approve(rid, "U0LEAD1")
    jit.drain(lambda: jit.rt.store.get(rid).status.value == "active", what="active")
    return rid


def nothing_kept(jit, rid) -> bool:
    return jit.rt.redis.get(keys.session(rid)) is None and not any(
        e.body["event"] == "session.ended" for e in jit.rt.audit.entries_for_request(rid)
    )


def test_a_session_is_kept_once_after_the_release(jit):
    rid = active(jit)
    # while the grant is live: not yet
    resp = post(jit, rid, body())
    assert resp.status_code == 409 and resp.get_json()["error"] == "not_ended"
    assert nothing_kept(jit, rid)

    assert jit.release(rid).status_code == 200
    resp = post(jit, rid, body())
    assert resp.status_code == 201, resp.get_json()
    assert resp.get_json()["transcript_sha256"] == body()["transcript_sha256"]

    # sealed at rest: the stored bytes do not hold the transcript; the TTL is the request's
    stored = jit.rt.redis.get(keys.session(rid))
    assert "connected" not in stored
    assert 0 < jit.rt.redis.pttl(keys.session(rid)) <= jit.rt.redis.pttl(keys.request(rid)) + 1000
    assert jit.rt.sessions.read(rid)["transcript"] == TRANSCRIPT

    # audited with the digest, never the transcript
    [ended] = [e.body for e in jit.rt.audit.entries_for_request(rid) if e.body["event"] == "session.ended"]
    assert ended["details"]["transcript_sha256"] == body()["transcript_sha256"]
    assert ended["details"]["run"] == "42" and ended["details"]["runner"] == "runner-7"
    assert "connected" not in json.dumps(ended)

    # once
    again = post(jit, rid, body(exit_code=1))
    assert again.status_code == 409 and again.get_json()["error"] == "session_recorded"
    assert jit.rt.sessions.read(rid)["exit_code"] == 0

    # the thread hears how the grant was used
    ts = jit.rt.store.get(rid).message_ts

    def thread():
        return [m["text"] for m in jit.slack.messages().values() if m.get("thread_ts") == ts]

    jit.drain(lambda: any(t.startswith("Used ") for t in thread()), what="the session line")
    notes = thread()
    [line] = [t for t in notes if t.startswith("Used ")]
    assert line.startswith("Used 2 m 13 s by run 42 · exit 0 · released ") and line.endswith(" early")
    assert not any("```" in t for t in notes)  # read-secret does not post transcripts
    jit.work()
    assert thread() == notes


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (body(transcript_sha256="0" * 64), 400),
        (body(exit_code=-1), 400),
        (body(exit_code="0"), 400),
        (body(extra=1), 400),
        (body(ended_at="2026-11-30T09:00:00Z"), 400),
        (body(started_at="yesterday"), 400),
        (body(ended_by="the moon"), 400),
        ({k: v for k, v in body().items() if k != "transcript"}, 400),
        (["not", "an", "object"], 400),
    ],
)
def test_bad_bodies_are_refused_and_change_nothing(jit, data, status):
    rid = active(jit)
    jit.release(rid)
    resp = post(jit, rid, data)
    assert resp.status_code == status, resp.get_json()
    assert nothing_kept(jit, rid)


def test_only_the_requests_own_token_may_record_it(jit):
    rid = active(jit)
    jit.release(rid)
    for token in (WEB_TOKEN, OTHER_TOKEN, "not-a-token"):
        assert post(jit, rid, body(), token=token).status_code in (401, 404)
    no_auth = jit.http.post(f"/v1/requests/{rid}/session", json=body())
    assert no_auth.status_code == 401
    assert nothing_kept(jit, rid)


def test_a_transcript_over_the_cap_is_413(jit, monkeypatch):
    rid = active(jit)
    jit.release(rid)
    monkeypatch.setattr(jit.rt.sessions, "transcript_max", 16)
    resp = post(jit, rid, body(transcript="x" * 17))
    assert resp.status_code == 413 and resp.get_json()["error"] == "too_large"
    assert nothing_kept(jit, rid)
    raw = json.dumps(body(transcript="y" * (3 * 1024 * 1024))).encode()
    resp = jit.http.post(
        f"/v1/requests/{rid}/session",
        data=raw,
        content_type="application/json",
        headers={"Authorization": f"Bearer {jit.follow_token(rid, WEB_TOKEN)}"},
    )
    assert resp.status_code == 413
    assert nothing_kept(jit, rid)


def test_a_request_never_granted_has_no_session(jit):
    rid = jit.ask("read-secret", reason="never")["id"]
    jit.release(rid)  # cancelled while pending
    resp = post(jit, rid, body())
    assert resp.status_code == 409
    assert nothing_kept(jit, rid)


def test_jit_audit_shows_the_session_summary(jit):
    rid = active(jit)
    jit.release(rid)
    assert post(jit, rid, body()).status_code == 201
    resp = jit.post_slack(slash_command(f"audit {rid}", "U0AUDITOR2"))
    assert resp.status_code == 200
    text = json.dumps(resp.get_json())
    assert "*Session*" in text and "Used 2 m 13 s by run 42" in text
    assert body()["transcript_sha256"][:16] in text
    assert "connected" not in text  # the summary, never the transcript
