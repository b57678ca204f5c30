"""The whole approval path, in-process: a pipeline asks, approvers click, the credential comes and goes."""

from __future__ import annotations

import json
import time

from fakes.slack import view_submission
from freezegun import freeze_time
from support import INTROSPECTION_TOKEN, OTHER_TOKEN, WEB_TOKEN

from bot.core.clock import now


def test_happy_path_two_approvers_then_expiry(jit, slack):
    created = jit.ask(
        "deploy-prod",
        reason="release 4.2",
        ttl="15m",
        context={
            "repository": "acme/web",
            "ref": "refs/heads/main",
            "commit": "abc123def456",
            "run_url": "https://ci.example/run/1",
        },
    )
    rid = created["id"]
    assert created["status"] == "pending" and created["request_token"]

    jit.work()
    post = slack.calls("chat.postMessage")[0]
    assert post.params["channel"] == "C0PROD"
    text = json.dumps(post.params["blocks"])
    for needle in (
        rid,
        "deploy-prod",
        "Deploy a release to production",
        "web-ci",
        "release 4.2",
        "acme/web",
        "refs/heads/main",
        "abc123def456",
        "https://ci.example/run/1",
        "0 of 2",
        "15m",
    ):
        assert needle in text, needle
    buttons = [e for b in post.params["blocks"] if b["type"] == "actions" for e in b["elements"]]
    assert [(b["text"]["text"], b.get("style")) for b in buttons] == [("Approve", "primary"), ("Deny", "danger")]

    assert jit.approve(rid, "U0LEAD1").status_code == 200
    jit.work()
    assert jit.status(rid).get_json()["status"] == "pending"
    msg = slack.message(jit.rt.store.get(rid).message_ts)
    assert "1 of 2" in json.dumps(msg["blocks"])
    assert jit.credential(rid).status_code == 409

    assert jit.approve(rid, "U0LEAD3").status_code == 200  # via the S0PRODLEADS user group
    jit.work()
    body = jit.status(rid).get_json()
    assert body["status"] == "active"
    assert body["approvals"]["count"] == 2 and set(body["approvals"]["by"]) == {"U0LEAD1", "U0LEAD3"}
    assert body["expires_at"].endswith("Z")
    cred = jit.credential(rid)
    assert cred.status_code == 200
    assert cred.get_json()["credential"]["username"].startswith("deploy-")
    assert len(jit.grants(rid)) == 1
    grant_input = json.loads(jit.grants(rid)[0])
    assert grant_input["request"]["ttl_seconds"] == 900
    assert grant_input["env"]["JIT_REQUEST_ID"] == rid and grant_input["env"]["JIT_ACTION"] == "deploy-prod"
    assert "SLACK_BOT_TOKEN" not in grant_input["env"] and "JIT_SECRET_KEY" not in grant_input["env"]

    msg = slack.message(jit.rt.store.get(rid).message_ts)
    blocks = json.dumps(msg["blocks"])
    assert "Active" in blocks and "Revoke now" in blocks and "Approve" not in blocks
    assert "s3cr3t" not in slack.all_text()


def test_deny_with_reason_reaches_pipeline(jit, slack):
    rid = jit.ask("deploy-prod")["id"]
    jit.work()
    trigger = "1337.42.abc"
    assert jit.click("jit_deny", rid, "U0LEAD2", trigger_id=trigger, button_text="Deny").status_code == 200
    jit.work()
    opened = slack.calls("views.open")
    assert opened and opened[0].params["trigger_id"] == trigger
    view = opened[0].params["view"]
    empty = jit.post_slack(
        view_submission(view["callback_id"], view["private_metadata"], {"reason": {"reason_input": "  "}}, "U0LEAD2")
    )
    assert empty.status_code == 200 and empty.get_json()["response_action"] == "errors"
    assert jit.status(rid).get_json()["status"] == "pending"
    ok = jit.post_slack(
        view_submission(
            view["callback_id"],
            view["private_metadata"],
            {"reason": {"reason_input": "not during the freeze"}},
            "U0LEAD2",
        )
    )
    assert ok.status_code == 200
    body = jit.status(rid).get_json()
    assert body["status"] == "denied"
    assert body["deny_reason"] == "not during the freeze" and body["decided_by"] == "U0LEAD2"
    jit.work()
    msg = slack.message(jit.rt.store.get(rid).message_ts)
    assert "not during the freeze" in json.dumps(msg["blocks"]) and "Approve" not in json.dumps(msg["blocks"])
    assert jit.credential(rid).status_code == 410
    assert jit.grants(rid) == []


def test_non_approver_refused_and_audited(jit, slack):
    rid = jit.ask("deploy-prod")["id"]
    jit.work()
    assert jit.approve(rid, "U0STRANGER").status_code == 200
    jit.work()
    assert jit.status(rid).get_json()["approvals"]["count"] == 0
    eph = slack.calls("chat.postEphemeral")
    assert eph and eph[-1].params["user"] == "U0STRANGER" and "not an approver" in eph[-1].params["text"]
    events = [e.body for e in jit.rt.audit.latest(10)]
    assert any(e["event"] == "approval.refused" and e["actor"] == "U0STRANGER" for e in events)


def test_self_approval_refused(jit, slack):
    rid = jit.ask("deploy-prod", requested_by="alice@example.com")["id"]
    jit.work()
    jit.approve(rid, "U0ALICE")
    jit.work()
    assert jit.status(rid).get_json()["approvals"]["count"] == 0
    assert "someone else" in slack.calls("chat.postEphemeral")[-1].params["text"]


def test_same_approver_twice_counts_once(jit, slack):
    rid = jit.ask("deploy-prod")["id"]
    jit.work()
    jit.approve(rid, "U0LEAD1")
    jit.approve(rid, "U0LEAD1")
    jit.work()
    body = jit.status(rid).get_json()
    assert body["status"] == "pending" and body["approvals"]["count"] == 1


def test_concurrent_clicks_one_grant(jit):
    import threading

    rid = jit.ask("read-secret")["id"]
    jit.work()
    barrier = threading.Barrier(2)
    results = []

    def click(user):
        from bot.core.errors import AlreadyDecided

        barrier.wait()
        try:
            results.append(jit.rt.decisions.approve(rid, user))
        except AlreadyDecided as e:
            results.append(type("Refused", (), {"result": "decided", "status": e.status})())

    threads = [threading.Thread(target=click, args=(u,)) for u in ("U0LEAD1", "U0ALICE")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(r.result for r in results) == ["approved", "decided"]
    jit.work()
    jit.work()
    assert jit.status(rid).get_json()["status"] == "active"
    issued = [e for e in jit.rt.audit.latest(50) if e.body["event"] == "grant.issued"]
    assert len(issued) == 1


def test_release_pending_and_active(jit):
    rid = jit.ask("deploy-prod")["id"]
    assert jit.release(rid).get_json()["status"] == "cancelled"
    rid2 = jit.ask("read-secret")["id"]
    jit.work()
    jit.approve(rid2, "U0LEAD1")
    jit.work()
    assert jit.status(rid2).get_json()["status"] == "active"
    out = jit.release(rid2).get_json()
    assert out["status"] == "revoked" and out["revoked_by"] == "pipeline:web-ci"
    assert jit.credential(rid2).status_code == 410
    jit.work()
    revoked = [e.body for e in jit.rt.audit.latest(30) if e.body["event"] == "grant.revoked"]
    assert len(revoked) == 1 and revoked[0]["request_id"] == rid2


def test_revoke_now_button(jit, slack):
    rid = jit.ask("deploy-prod")["id"]
    jit.work()
    jit.approve(rid, "U0LEAD1")
    jit.approve(rid, "U0LEAD2")
    jit.work()
    assert jit.status(rid).get_json()["status"] == "active"
    jit.click("jit_revoke", rid, "U0STRANGER", button_text="Revoke now")
    assert jit.status(rid).get_json()["status"] == "active"
    jit.click("jit_revoke", rid, "U0LEAD2", button_text="Revoke now")
    assert jit.status(rid).get_json()["status"] == "revoked"
    jit.work()
    assert len(jit.grants(rid, "revoke")) == 1
    revoke_input = json.loads(jit.grants(rid, "revoke")[0])
    assert revoke_input["request"]["credential"]["username"].startswith("deploy-")
    assert jit.rt.store.credential_blob(rid) is None


def test_short_grant_expires_and_is_revoked(jit):
    rid = jit.ask("quick", ttl="1s")["id"]
    jit.work()
    jit.approve(rid, "U0LEAD1")
    jit.work()
    # on a loaded machine the 1 s window may already be over here: check it was issued
    issued = [e.body for e in jit.rt.audit.latest(20) if e.body["event"] == "grant.issued"]
    assert len(issued) == 1 and issued[0]["request_id"] == rid
    expires_at = jit.rt.store.get(rid).expires_at
    time.sleep(max((expires_at - now()).total_seconds(), 0) + 0.05)
    jit.work()
    body = jit.status(rid).get_json()
    assert body["status"] == "expired"
    assert jit.credential(rid).status_code == 410
    assert len(jit.grants(rid, "revoke")) == 1
    ev = [e.body for e in jit.rt.audit.latest(20) if e.body["event"] == "grant.revoked"][0]
    assert ev["actor"] == "expiry" and ev["details"]["lateness_ms"] >= 0


def test_follow_up_needs_pipeline_or_request_token(jit):
    created = jit.ask("read-secret")
    rid = created["id"]
    assert jit.status(rid, token=created["request_token"]).status_code == 200
    assert jit.status(rid, token=OTHER_TOKEN).status_code == 404
    assert jit.status(rid, token="nope").status_code == 404
    assert jit.http.get(f"/v1/requests/{rid}").status_code == 401
    assert jit.status(rid, token=WEB_TOKEN).status_code == 200


def test_idempotency_key_returns_same_request(jit, slack):
    a = jit.ask("read-secret", headers={"Idempotency-Key": "run-42-attempt-1"})
    b = jit.ask("read-secret", headers={"Idempotency-Key": "run-42-attempt-1"}, expect=200)
    assert a["id"] == b["id"] and a["request_token"] == b["request_token"]
    jit.work()
    assert len(slack.calls("chat.postMessage")) == 1
    # with a static pipeline token the key is as good as the request_token: every replay is on the record
    replays = [e.body for e in jit.rt.audit.entries_for_request(a["id"]) if e.body["event"] == "request.replayed"]
    assert [(e["actor"], e["details"]["via"]) for e in replays] == [("pipeline:web-ci", "idempotency_key")]
    assert a["request_token"] not in json.dumps(replays)


def test_token_backend_jwks_and_introspection(jit):
    import jwt

    rid = jit.ask("read-secret")["id"]
    jit.work()
    jit.approve(rid, "U0LEAD1")
    jit.work()
    token = jit.credential(rid).get_json()["credential"]["token"]
    jwks = jit.http.get("/.well-known/jwks.json").get_json()
    header = jwt.get_unverified_header(token)
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    claims = jwt.decode(token, jwt.PyJWK(key).key, algorithms=["EdDSA"], audience="secrets-api")
    assert claims["sub"] == "web-ci" and claims["act"] == "read-secret" and claims["jti"] == rid
    auth = {"Authorization": f"Bearer {INTROSPECTION_TOKEN}"}  # the resource server of secrets-api
    live = jit.http.post("/v1/introspect", data={"token": token}, headers=auth).get_json()
    assert live["active"] is True and live["jti"] == rid
    assert jit.http.post("/v1/introspect", data={"token": token}).status_code == 401
    as_pipeline = {"Authorization": f"Bearer {WEB_TOKEN}"}  # a pipeline token is no introspection credential
    assert jit.http.post("/v1/introspect", data={"token": token}, headers=as_pipeline).status_code == 401
    jit.release(rid)
    assert jit.http.post("/v1/introspect", data={"token": token}, headers=auth).get_json() == {"active": False}


def test_the_times_in_the_201_are_the_ones_every_later_read_returns(jit):
    """A clock reading with a sub-millisecond part past the half (…123789) once came back one
    millisecond later from every GET than in the 201: stored rounded, shown truncated."""
    with freeze_time("2026-11-30 10:00:00.123789"):
        created = jit.ask("deploy-prod")
        again = jit.status(created["id"]).get_json()
    later = jit.status(created["id"]).get_json()
    assert created["created_at"] == "2026-11-30T10:00:00.123Z"
    for read in (again, later):
        assert (read["created_at"], read["pending_until"]) == (created["created_at"], created["pending_until"])
