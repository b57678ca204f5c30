"""Extending an active grant: at once within policy, after a new approval round, or refused."""

from __future__ import annotations

import pytest
from extend_support import with_extend
from support import OTHER_TOKEN, WEB_TOKEN, policy_text

from bot.core.clock import rfc3339


@pytest.fixture
def policy_file(tmp_path, state_dir):
    text = policy_text(str(state_dir))
    text = with_extend(text, "read-secret", "{max_total: 40m}")
    text = with_extend(text, "deploy-prod", "{max_total: 1h, approvals_required: 1}")
    p = tmp_path / "jit-policy.yaml"
    p.write_text(text)
    return p


def extend(jit, rid, token=WEB_TOKEN, **body):
    return jit.http.post(
        f"/v1/requests/{rid}/extend",
        json=body,
        headers={"Authorization": f"Bearer {jit.follow_token(rid, token)}"},
    )


def active(jit, action, approvers, **body):
    rid = jit.ask(action, **body)["id"]
    for user in approvers:
        jit.approve(rid, user)
    jit.drain(lambda: jit.status(rid).get_json()["status"] == "active", what="active")
    return rid


def test_an_extension_within_policy_applies_at_once(jit):
    rid = active(jit, "read-secret", ["U0LEAD1"], ttl="10m")
    before = jit.rt.store.get(rid)
    token_before = jit.credential(rid).get_json()["credential"]["token"]
    resp = extend(jit, rid, ttl="15m", reason="the migration is slow")
    assert resp.status_code == 200, resp.get_json()
    after = jit.rt.store.get(rid)
    assert (after.expires_at - before.expires_at).total_seconds() == 15 * 60
    assert resp.get_json()["expires_at"].startswith(after.expires_at.strftime("%Y-%m-%dT%H:%M:%S"))
    # the scheduled revocation moved with it: one member, at the new end
    assert jit.rt.redis.zscore("jit:due", f"expire:{rid}") == pytest.approx(after.expires_at.timestamp() * 1000, abs=1)
    # the token is re-issued with the new exp
    jit.work()
    token_after = jit.credential(rid).get_json()["credential"]["token"]
    assert token_after != token_before
    claims = jit.rt.signer.verify(token_after)
    assert claims["exp"] == int(after.expires_at.timestamp())
    events = [e.body for e in jit.rt.audit.entries_for_request(rid) if e.body["event"] == "grant.extended"]
    assert len(events) == 1
    d = events[0]["details"]
    assert events[0]["actor"] == "pipeline:web-ci" and d["reason"] == "the migration is slow"
    assert d["added_seconds"] == 900
    assert (d["old_expires_at"], d["new_expires_at"]) == (rfc3339(before.expires_at), rfc3339(after.expires_at))


def test_over_max_total_is_422_and_changes_nothing(jit):
    rid = active(jit, "read-secret", ["U0LEAD1"], ttl="10m")
    before = jit.rt.store.get(rid).expires_at
    resp = extend(jit, rid, ttl="31m")
    assert resp.status_code == 422 and resp.get_json()["error"] == "over_max_total"
    assert "max_total" in resp.get_json()["message"]
    assert jit.rt.store.get(rid).expires_at == before


def test_refusals(jit):
    rid = jit.ask("read-secret")["id"]
    resp = extend(jit, rid, ttl="5m")
    assert resp.status_code == 409 and resp.get_json()["error"] == "not_active"
    quick = active(jit, "quick", ["U0LEAD1"], ttl="1m")
    resp = extend(jit, quick, ttl="5s")
    assert resp.status_code == 403 and resp.get_json()["error"] == "no_extend"
    assert extend(jit, quick, token="wrong", ttl="5s").status_code in (401, 404)
    live = active(jit, "read-secret", ["U0LEAD1"], ttl="10m")
    resp = extend(jit, live, ttl="soon")
    assert resp.status_code == 400 and resp.get_json()["error"] == "bad_request"
    resp = extend(jit, live, ttl="5m", extra=1)
    assert resp.status_code == 400 and "unknown field" in resp.get_json()["message"]


def test_an_extension_that_needs_approval(jit, slack):
    rid = active(jit, "deploy-prod", ["U0LEAD1", "U0LEAD2"])
    before = jit.rt.store.get(rid).expires_at
    resp = extend(jit, rid, ttl="10m", reason="one more step")
    assert resp.status_code == 202, resp.get_json()
    assert jit.rt.store.get(rid).expires_at == before
    assert extend(jit, rid, ttl="10m").status_code == 202  # asking again: the same round
    assert extend(jit, rid, ttl="20m").status_code == 409  # another one waits
    jit.work()
    ts = jit.rt.store.get(rid).message_ts
    blocks = str(slack.message(ts)["blocks"])
    assert "Extension requested" in blocks and "Approve" in blocks
    jit.approve(rid, "U0LEAD1")
    jit.work()
    after = jit.rt.store.get(rid).expires_at
    assert (after - before).total_seconds() == 600
    events = [e.body for e in jit.rt.audit.entries_for_request(rid) if e.body["event"] == "grant.extended"]
    assert len(events) == 1 and events[0]["details"]["approved_by"] == ["U0LEAD1"]
    assert "Extension requested" not in str(slack.message(ts)["blocks"])


def test_the_same_pipeline_asking_again_gets_its_active_grant_back(jit):
    rid = active(jit, "read-secret", ["U0LEAD1"], ttl="10m")
    again = jit.ask("read-secret", expect=200, reason="a second step of the same job")
    assert again["id"] == rid and again["status"] == "active"
    assert again["request_token"] == jit.request_tokens[(rid, WEB_TOKEN)]
    reused = [e.body for e in jit.rt.audit.entries_for_request(rid) if e.body["event"] == "request.reused"]
    assert len(reused) == 1 and reused[0]["details"]["reason"] == "a second step of the same job"
    # another pipeline, or another action, is not the same grant
    other = jit.ask("read-secret", token=OTHER_TOKEN)
    assert other["id"] != rid and other["status"] == "pending"
    assert jit.ask("deploy-prod")["id"] != rid
    # once the grant is over, asking again is a new request
    assert jit.release(rid).status_code == 200
    assert jit.ask("read-secret")["id"] != rid
