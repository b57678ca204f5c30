"""Input that cannot be stored, encoded or audited is a 400 before anything is written; a reused
Idempotency-Key with another body is a 422; a request never exists without its creation record."""

from __future__ import annotations

import pytest
from support import WEB_TOKEN

from bot.store import keys

AUTH = {"Authorization": f"Bearer {WEB_TOKEN}", "Content-Type": "application/json"}


def snapshot(rt):
    r = rt.redis
    rt.audit.flush()
    return (
        sorted(r.scan_iter("jit:req:*")),
        r.zcard(keys.due()),
        r.xlen(keys.audit_stream()),
        r.llen(keys.audit_outbox()),
        sorted(r.scan_iter("jit:idem:*")),
    )


@pytest.mark.parametrize(
    "raw",
    [
        b'{"action": "deploy-prod", "reason": "x", "context": {"ref": "\\udfff"}}',
        b'{"action": "deploy-prod", "reason": "release \\ud800"}',
        b'{"action": "deploy-prod", "reason": "x", "requested_by": "\\udbff"}',
        b'{"action": "deploy-prod", "reason": "x", "context": {"k\\udfff": "v"}}',
        b'{"action": "deploy-prod", "reason": "x", "ttl": "\\ud800"}',
        b'{"action": "deploy-prod", "reason": "x", "ttl": 100000000000000000000}',
        b'{"action": "deploy-prod", "reason": "x", "ttl": "99999999999999999999d"}',
        b'{"action": "deploy-prod", "reason": "x", "ttl": "4000000d"}',
    ],
)
def test_unstorable_input_is_a_400_and_writes_nothing(jit, slack, raw):
    before = snapshot(jit.rt)
    resp = jit.http.post("/v1/requests", data=raw, headers=AUTH)
    assert resp.status_code == 400, resp.get_data(as_text=True)
    assert resp.get_json()["error"] == "bad_request"
    resp.get_data().decode("utf-8")  # the answer itself is valid UTF-8
    jit.work()
    assert snapshot(jit.rt) == before
    assert not slack.calls("chat.postMessage")


def test_every_request_has_its_creation_record_from_its_first_moment(jit):
    """Creating a request and recording it are one step: the request and its `request.created`
    event (on the outbox, then in the trail) appear together or not at all."""
    rid = jit.ask("deploy-prod", reason="atomic")["id"]
    jit.rt.audit.flush()
    events = [e.body["event"] for e in jit.rt.audit.entries_for_request(rid)]
    assert events[0] == "request.created"


def test_a_reused_idempotency_key_with_another_body_is_refused(jit):
    headers = {"Idempotency-Key": "run-42-deploy"}
    first = jit.ask("deploy-prod", reason="release 4.2", headers=headers)
    again = jit.ask("deploy-prod", reason="release 4.2", headers=headers, expect=200)
    assert again["id"] == first["id"] and again["request_token"] == first["request_token"]
    before = snapshot(jit.rt)
    other = jit.ask("read-secret", reason="release 4.2", headers=headers, expect=422)
    assert other["error"] == "idempotency_key_reused"
    assert (
        jit.ask("deploy-prod", reason="release 4.3", headers=headers, expect=422)["error"] == "idempotency_key_reused"
    )
    assert jit.ask("deploy-prod", reason="release 4.2", ttl="20m", headers=headers, expect=422)
    assert snapshot(jit.rt) == before
