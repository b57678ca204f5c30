"""Bad input gets a precise 4xx JSON error and changes nothing."""

from __future__ import annotations

import json

import pytest
from support import OTHER_TOKEN, WEB_TOKEN

AUTH = {"Authorization": f"Bearer {WEB_TOKEN}"}


def snapshot(rt):
    r = rt.redis
    return (sorted(r.scan_iter("jit:req:*")), r.zcard("jit:due"), r.xlen("jit:audit") if r.exists("jit:audit") else 0)


@pytest.mark.parametrize(
    "body,headers,status,code",
    [
        (b"{not json", {"Content-Type": "application/json"}, 400, "malformed_json"),
        (b"[1, 2]", {"Content-Type": "application/json"}, 400, "bad_request"),
        (json.dumps({"reason": "x"}).encode(), {"Content-Type": "application/json"}, 400, "bad_request"),
        (json.dumps({"action": "deploy-prod"}).encode(), {"Content-Type": "application/json"}, 400, "bad_request"),
        (
            json.dumps({"action": "deploy-prod", "reason": "   "}).encode(),
            {"Content-Type": "application/json"},
            400,
            "bad_request",
        ),
        (
            json.dumps({"action": "deploy-prod", "reason": "x" * 501}).encode(),
            {"Content-Type": "application/json"},
            400,
            "bad_request",
        ),
        (
            json.dumps({"action": "deploy-prod", "reason": "x", "ttl": "2h"}).encode(),
            {"Content-Type": "application/json"},
            400,
            "bad_request",
        ),
        (
            json.dumps({"action": "deploy-prod", "reason": "x", "ttl": "soon"}).encode(),
            {"Content-Type": "application/json"},
            400,
            "bad_request",
        ),
        (
            json.dumps({"action": "deploy-prod", "reason": "x", "ttl": -5}).encode(),
            {"Content-Type": "application/json"},
            400,
            "bad_request",
        ),
        (
            json.dumps({"action": "deploy-prod", "reason": "x", "surprise": 1}).encode(),
            {"Content-Type": "application/json"},
            400,
            "bad_request",
        ),
        (
            json.dumps(
                {"action": "deploy-prod", "reason": "x", "context": {"run_url": "javascript:alert(1)"}}
            ).encode(),
            {"Content-Type": "application/json"},
            400,
            "bad_request",
        ),
        (
            json.dumps({"action": "deploy-prod", "reason": "x" * 20000}).encode(),
            {"Content-Type": "application/json"},
            413,
            "too_large",
        ),
        (
            json.dumps({"action": "deploy-prod", "reason": "x"}).encode(),
            {"Content-Type": "text/plain"},
            415,
            "unsupported_media_type",
        ),
        (
            json.dumps({"action": "no-such-action", "reason": "x"}).encode(),
            {"Content-Type": "application/json"},
            404,
            "unknown_action",
        ),
    ],
)
def test_bad_create_is_rejected_and_changes_nothing(jit, body, headers, status, code):
    before = snapshot(jit.rt)
    resp = jit.http.post("/v1/requests", data=body, headers={**AUTH, **headers})
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.get_json()["error"] == code and resp.get_json()["message"]
    assert snapshot(jit.rt) == before


def test_forbidden_action_for_this_pipeline(jit):
    before = snapshot(jit.rt)
    resp = jit.http.post(
        "/v1/requests",
        json={"action": "deploy-prod", "reason": "x"},
        headers={"Authorization": f"Bearer {OTHER_TOKEN}"},
    )
    assert resp.status_code == 403 and resp.get_json()["error"] == "action_not_allowed"
    assert snapshot(jit.rt) == before


@pytest.mark.parametrize("auth", [None, "Bearer wrong-token", "Basic dXNlcjpwYXNz", "Bearer "])
def test_bad_token_is_401(jit, auth):
    before = snapshot(jit.rt)
    headers = {"Authorization": auth} if auth else {}
    resp = jit.http.post("/v1/requests", json={"action": "deploy-prod", "reason": "x"}, headers=headers)
    assert resp.status_code == 401 and resp.get_json()["error"] == "unauthorized"
    assert snapshot(jit.rt) == before


def test_ttl_accepts_duration_syntax_and_seconds(jit):
    assert jit.ask("deploy-prod", ttl="90s")["ttl"] == 90
    assert jit.ask("deploy-prod", ttl=600)["ttl"] == 600
    assert jit.ask("deploy-prod", ttl="1h")["ttl"] == 3600
    assert jit.ask("deploy-prod")["ttl"] == 900  # the action's default


def test_wait_parameter_is_validated(jit):
    rid = jit.ask("deploy-prod")["id"]
    assert jit.status(rid, wait=61).status_code == 400
    assert jit.status(rid, wait="abc").status_code == 400
    assert jit.status(rid, wait=0).status_code == 200


def test_unknown_request_is_404(jit):
    assert jit.status("0123456789abcdef").status_code == 404
    assert jit.credential("0123456789abcdef").status_code == 404
    assert jit.release("0123456789abcdef").status_code == 404


def test_times_are_rfc3339_utc_millis(jit):
    body = jit.ask("deploy-prod")
    import re

    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["created_at"])


def test_health_endpoints(jit):
    assert jit.http.get("/healthz").status_code == 200
    assert jit.http.get("/readyz").status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 8000 + b"]" * 8000,  # 16 KB: used to end in a RecursionError (500)
        b'{"action": "deploy-prod", "reason": "x", "context": ' + b'{"a": ' * 40 + b"1" + b"}" * 41,
        b'{"a": "' + b"[" * 100 + b'", "b": ' + b"[" * 33 + b"]" * 33 + b"}",  # brackets in strings do not count
    ],
)
def test_deeply_nested_json_is_400_malformed(jit, body):
    before = snapshot(jit.rt)
    resp = jit.http.post("/v1/requests", data=body, headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status_code == 400, resp.get_data(as_text=True)
    assert resp.get_json()["error"] == "malformed_json" and "nested" in resp.get_json()["message"]
    assert snapshot(jit.rt) == before


def test_json_nesting_within_the_bound_is_parsed(jit):
    # brackets inside strings (escaped quotes too) are text, not nesting
    reason = '[[[[ "quoted" \\" ]]]] {{{{' * 20
    body = json.dumps({"action": "deploy-prod", "reason": reason[:500]}).encode()
    resp = jit.http.post("/v1/requests", data=body, headers={**AUTH, "Content-Type": "application/json"})
    assert resp.status_code == 201, resp.get_data(as_text=True)
