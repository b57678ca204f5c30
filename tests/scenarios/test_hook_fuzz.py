"""The pipeline hook under random input: never a 5xx, only documented answers, and a refused
call changes nothing. Also: the published OpenAPI document, token comparison, rate limiting."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import timedelta
from urllib.parse import quote

import pytest
from fakes.slack import view_submission
from freezegun import freeze_time
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from policy_rules_support import rules_policy_text
from redis_state import snapshot
from support import INTROSPECTION_TOKEN, OTHER_TOKEN, WEB_TOKEN

from bot.core.clock import now
from bot.core.model import Status
from workers.jobs.timeout import time_out

FUZZ = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PIPELINE = {"Authorization": f"Bearer {WEB_TOKEN}"}
#: Keys a refused call may write: the rate limiter counts attempts, the user-group cache warms.
IGNORED = ("jit:ratelimit:", "jit:cache:", "jit:audit")


@pytest.fixture
def unlimited(jit_env, monkeypatch):
    monkeypatch.setenv("JIT_RATE_LIMIT", "0")


@pytest.fixture
def hook(unlimited, jit, app):
    """The app, a pending and a finished request, and the document to check answers against."""
    pending = jit.ask("deploy-prod")
    done = jit.ask("read-secret")
    assert jit.release(done["id"]).get_json()["status"] == "cancelled"
    jit.work()
    doc = jit.http.get("/openapi.json").get_json()
    return Hook(jit, app, doc, pending, done)


class Hook:
    def __init__(self, jit, app, doc, pending, done) -> None:
        self.jit, self.app, self.doc = jit, app, doc
        self.pending, self.done = pending, done
        self.templates = [(re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$"), p) for p in doc["paths"]]

    def state(self):
        return snapshot(self.jit.rt.redis, IGNORED), self.jit.rt.audit.count()

    def operation(self, method: str, path: str):
        for rx, template in self.templates:
            if rx.match(path.split("?")[0]):
                return template, self.doc["paths"][template].get(method.lower())
        return None, None

    def call(self, method: str, path: str, **kw):
        """One call: never 5xx, a documented status and body, and no change when refused."""
        before = self.state()
        resp = self.jit.http.open(path, method=method, **kw)
        assert resp.status_code < 500, (method, path, resp.status_code, resp.data[:300])
        template, op = self.operation(method, path)
        if currently_in_test_context():
            event(f"{method} {template} -> {resp.status_code}")
        if op is not None and resp.status_code != 405:
            documented = op["responses"]
            assert str(resp.status_code) in documented, (method, template, resp.status_code, resp.data[:300])
            content = documented[str(resp.status_code)]["content"]
            if "application/json" in content:
                assert resp.mimetype == "application/json"
                validate(self.doc, resp.get_json(), content["application/json"]["schema"])
            else:
                assert resp.mimetype in content, (template, resp.mimetype)
        else:
            assert resp.status_code in (404, 405), (method, path, resp.status_code)
            assert set(resp.get_json()) == {"error", "message"}
        if resp.status_code >= 400:
            assert self.state() == before, (method, path, resp.status_code, resp.data[:300])
        return resp


def validate(doc: dict, instance, schema: dict) -> None:
    import jsonschema

    # `$ref`s point at #/components/…: give the schema the document's components as its root.
    root = {**schema, "components": doc["components"]}
    jsonschema.Draft202012Validator(root, format_checker=jsonschema.FormatChecker()).validate(instance)


# ------------------------------------------------------------------------ strategies

TOKENS = st.one_of(
    st.sampled_from([WEB_TOKEN, OTHER_TOKEN, WEB_TOKEN[:-1], WEB_TOKEN + "x", WEB_TOKEN.upper(), "", " "]),
    st.text(min_size=1, max_size=60),
    st.binary(max_size=30).map(lambda b: b.hex()),
    st.just("x" * 9000),
)
AUTH = st.one_of(
    st.none(),
    TOKENS.map(lambda t: f"Bearer {t}"),
    TOKENS.map(lambda t: f"bearer   {t}  "),
    st.sampled_from(["Basic dXNlcjpwYXNz", "Bearer", "Bearer ", f"Token {WEB_TOKEN}", WEB_TOKEN]),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
    max_leaves=12,
)
ACTIONS = st.sampled_from(["deploy-prod", "read-secret", "quick", "nope", "", "DEPLOY-PROD", "a" * 65])
TTLS = st.one_of(
    st.none(),
    st.integers(-10, 10**12),
    st.sampled_from(
        ["90s", "15m", "2h", "1d", "0s", "-5m", "15 m", "1w", "2h30m", "", " 5m ", "99999999999999999999h"]
    ),
    st.booleans(),
    st.floats(allow_nan=False),
    st.text(max_size=10),
)
LONG = st.one_of(st.text(max_size=30), st.text(min_size=490, max_size=520), st.just("<!channel> " * 60))
CONTEXT = st.one_of(
    st.dictionaries(
        st.sampled_from(["repository", "ref", "commit", "run_url", "environment", "Bad-Key", "x" * 41]),
        st.one_of(
            LONG, st.integers(), st.none(), st.sampled_from(["https://ci/run/1", "javascript:alert(1)", "https://a|b"])
        ),
        max_size=5,
    ),
    JSON_VALUES,
)
#: Most calls carry a valid pipeline token, so the body is fuzzed past authentication.
AUTH_MOSTLY_VALID = st.tuples(st.sampled_from(["web", "web", "web", "other", "fuzz"]), AUTH).map(
    lambda t: {"web": f"Bearer {WEB_TOKEN}", "other": f"Bearer {OTHER_TOKEN}"}.get(t[0], t[1])
)
VALID_BODIES = st.fixed_dictionaries(
    {"action": st.sampled_from(["deploy-prod", "read-secret", "quick"]), "reason": st.sampled_from(["release", "r"])},
    optional={
        "ttl": st.sampled_from(["90s", "5m", 60, "1m"]),
        "requested_by": st.sampled_from(["alice", "bob"]),
        "context": st.fixed_dictionaries(
            {}, optional={"repository": st.just("acme/web"), "run_url": st.just("https://ci/run/1")}
        ),
    },
)
BODIES = st.one_of(
    VALID_BODIES,
    JSON_VALUES,
    st.fixed_dictionaries(
        {"action": ACTIONS, "reason": LONG},
        optional={
            "ttl": TTLS,
            "requested_by": st.one_of(LONG, st.none(), st.integers()),
            "context": CONTEXT,
            "break_glass": st.one_of(st.booleans(), st.none(), st.text(max_size=3)),
            "extra": JSON_VALUES,
        },
    ),
)
CONTENT_TYPES = st.sampled_from(
    [
        "application/json",
        "application/json; charset=utf-8",
        "APPLICATION/JSON",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/jsonx",
        "",
        None,
    ]
)
IDEM = st.one_of(
    st.none(), st.text(min_size=0, max_size=5), st.just("k" * 256), st.sampled_from(["retry-1", "retry-1"])
)
IDS = st.one_of(
    st.text(max_size=40).map(lambda s: quote(s, safe="")),
    st.sampled_from(["", "..", "%2e%2e", "0" * 16, "zzzz", "a" * 5000, "%00", "jit:req:x", "*"]),
)
WAITS = st.one_of(
    st.none(),
    st.sampled_from(["0", "60", "60.0001", "-1", "nan", "inf", "-inf", "1e309", "", " 1", "0x10", "1_0", "½"]),
    st.text(max_size=8),
)


def headers_for(auth, ctype=None, idem=None) -> dict:
    h = {}
    if auth is not None:
        h["Authorization"] = auth
    if ctype is not None:
        h["Content-Type"] = ctype
    if idem is not None:
        h["Idempotency-Key"] = idem
    return h


def _header_safe(value: str | None) -> bool:
    return value is None or ("\n" not in value and "\r" not in value and value.isprintable())


# ------------------------------------------------------------------------ fuzzing


@FUZZ
@given(
    auth=AUTH_MOSTLY_VALID,
    ctype=st.one_of(st.just("application/json"), CONTENT_TYPES),
    idem=IDEM,
    body=BODIES,
    raw=st.one_of(st.none(), st.none(), st.binary(max_size=200)),
    big=st.sampled_from([0, 0, 0, 0, 0, 17 * 1024]),
)
def test_fuzz_create(hook, auth, ctype, idem, body, raw, big):
    if not all(_header_safe(v) for v in (auth, ctype, idem)):
        return
    data = raw if raw is not None else json.dumps(body).encode()
    if big:
        data = json.dumps({"action": "deploy-prod", "reason": "r", "context": {"repository": "x" * big}}).encode()
    resp = hook.call("POST", "/v1/requests", data=data, headers=headers_for(auth, ctype, idem))
    if resp.status_code in (200, 201):
        assert auth is not None and (WEB_TOKEN in auth or OTHER_TOKEN in auth)


@FUZZ
@given(
    auth=AUTH,
    role=st.sampled_from(["pipeline", "request_token", "fuzz"]),
    rid=IDS,
    which=st.sampled_from(["done", "random", "pending"]),
    wait=WAITS,
    method=st.sampled_from(["GET", "DELETE", "CRED"]),
)
def test_fuzz_follow_ups(hook, auth, role, rid, which, wait, method):
    if role == "pipeline":
        auth = f"Bearer {WEB_TOKEN}"
    elif role == "request_token":
        auth = f"Bearer {hook.done['request_token'] if which == 'done' else hook.pending['request_token']}"
    if not _header_safe(auth):
        return
    if which != "random":
        rid = (hook.done if which == "done" else hook.pending)["id"]
    path = f"/v1/requests/{rid}"
    if method == "CRED":
        path += "/credential"
    if method == "GET" and wait is not None:
        if which == "pending" and wait.strip() not in ("", "0"):
            wait = "0"  # a valid wait on a pending request holds the call: not what this test is about
        path += "?wait=" + quote(wait, safe="")
    if which == "pending" and method == "DELETE":
        method = "GET"  # cancelling is a legitimate change; keep the pending request pending
    resp = hook.call("DELETE" if method == "DELETE" else "GET", path, headers=headers_for(auth))
    if resp.status_code == 200:
        assert auth is not None and (
            WEB_TOKEN in auth or hook.done["request_token"] in auth or hook.pending["request_token"] in auth
        ), auth


@FUZZ
@given(
    auth=AUTH_MOSTLY_VALID,
    form=st.one_of(
        st.dictionaries(st.sampled_from(["token", "token_type_hint", "x"]), st.text(max_size=40), max_size=3),
        st.just({"token": "eyJhbGciOiJFZERTQSJ9.e30.sig"}),
    ),
    ctype=st.sampled_from(["application/x-www-form-urlencoded", "application/json", "text/plain", None]),
)
def test_fuzz_introspect(hook, auth, form, ctype):
    if not _header_safe(auth):
        return
    if ctype == "application/x-www-form-urlencoded" or ctype is None:
        resp = hook.call("POST", "/v1/introspect", data=form, headers=headers_for(auth))
    else:
        resp = hook.call("POST", "/v1/introspect", data=json.dumps(form), headers=headers_for(auth, ctype))
    if resp.status_code == 200:
        assert resp.get_json() == {"active": False}


@FUZZ
@given(
    path=st.sampled_from(
        [
            "/.well-known/jwks.json",
            "/healthz",
            "/readyz",
            "/openapi.json",
            "/metrics",
            "/v1/requests",
            "/v1/requests/x",
            "/v1/requests/x/credential",
            "/v1/introspect",
            "/v1",
            "/",
        ]
    ),
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]),
    auth=AUTH,
    query=st.text(max_size=20),
)
def test_fuzz_methods_and_public_endpoints(hook, path, method, auth, query):
    if not _header_safe(auth):
        return
    if method == "DELETE" and path == "/v1/requests/x":
        pass  # an unknown id: 404, nothing changes
    resp = hook.jit.http.open(path + "?q=" + quote(query, safe=""), method=method, headers=headers_for(auth))
    assert resp.status_code < 500
    if method in ("HEAD", "OPTIONS"):
        return
    hook.call(method, path + "?q=" + quote(query, safe=""), headers=headers_for(auth))


def test_rejected_bodies_change_nothing_examples(hook):
    """Hand-picked cases from the issue, each with its precise status."""
    auth = {"Authorization": f"Bearer {WEB_TOKEN}"}
    cases = [
        (b"{", "application/json", 400),
        (b'{"action": "deploy-prod", "reason": "r"}', "text/plain", 415),
        (json.dumps({"action": "deploy-prod", "reason": "x" * 501}).encode(), "application/json", 400),
        (json.dumps({"action": "deploy-prod", "reason": "r", "pad": "x" * 17000}).encode(), "application/json", 413),
        (json.dumps({"action": "nope", "reason": "r"}).encode(), "application/json", 404),
        (json.dumps({"action": "deploy-prod", "reason": "r", "ttl": "2h"}).encode(), "application/json", 400),
        (json.dumps({"action": "deploy-prod", "reason": "r", "ttl": True}).encode(), "application/json", 400),
        (json.dumps({"action": "deploy-prod", "reason": "r", "ttl": 0}).encode(), "application/json", 400),
        (json.dumps({"action": "deploy-prod", "reason": "r", "break_glass": "yes"}).encode(), "application/json", 400),
        (json.dumps({"action": "deploy-prod", "reason": "  "}).encode(), "application/json", 400),
        (json.dumps(["deploy-prod"]).encode(), "application/json", 400),
    ]
    for data, ctype, status in cases:
        resp = hook.call("POST", "/v1/requests", data=data, headers={**auth, "Content-Type": ctype})
        assert resp.status_code == status, (data[:80], resp.get_json())
    other = {"Authorization": f"Bearer {OTHER_TOKEN}"}
    resp = hook.call("POST", "/v1/requests", json={"action": "deploy-prod", "reason": "r"}, headers=other)
    assert resp.status_code == 403
    resp = hook.call(
        "POST", "/v1/requests", json={"action": "deploy-prod", "reason": "r"}, headers={"Authorization": "Bearer wrong"}
    )
    assert resp.status_code == 401 and resp.headers["WWW-Authenticate"].startswith("Bearer")
    # another pipeline's token and a foreign request_token: 404, never a peek
    for token in (OTHER_TOKEN, hook.done["request_token"]):
        assert (
            hook.call(
                "GET", f"/v1/requests/{hook.pending['id']}", headers={"Authorization": f"Bearer {token}"}
            ).status_code
            == 404
        )
        assert (
            hook.call(
                "DELETE", f"/v1/requests/{hook.pending['id']}", headers={"Authorization": f"Bearer {token}"}
            ).status_code
            == 404
        )
    assert hook.jit.status(hook.pending["id"]).get_json()["status"] == "pending"


def test_accepted_answers_match_the_document(hook):
    """The 2xx side of the contract: a whole flow, every answer validated against its schema."""
    jit = hook.jit
    auth = {"Authorization": f"Bearer {WEB_TOKEN}"}
    created = hook.call(
        "POST",
        "/v1/requests",
        json={
            "action": "read-secret",
            "reason": "r",
            "ttl": "5m",
            "context": {"repository": "acme/web", "custom": "1"},
        },
        headers={**auth, "Idempotency-Key": "one"},
    )
    assert created.status_code == 201 and created.headers["Location"].endswith(created.get_json()["id"])
    again = hook.call(
        "POST",
        "/v1/requests",
        json={
            "action": "read-secret",
            "reason": "r",
            "ttl": "5m",
            "context": {"repository": "acme/web", "custom": "1"},
        },
        headers={**auth, "Idempotency-Key": "one"},
    )
    assert again.status_code == 200 and again.get_json()["id"] == created.get_json()["id"]
    other = hook.call(
        "POST",
        "/v1/requests",
        json={"action": "read-secret", "reason": "r", "ttl": "5m"},
        headers={**auth, "Idempotency-Key": "one"},
    )
    assert other.status_code == 422
    rid = created.get_json()["id"]
    as_request = {"Authorization": f"Bearer {created.get_json()['request_token']}"}
    jit.work()
    assert hook.call("GET", f"/v1/requests/{rid}/credential", headers=as_request).status_code == 409
    jit.approve(rid, "U0LEAD1")
    jit.work()
    assert hook.call("GET", f"/v1/requests/{rid}?wait=0.1", headers=as_request).get_json()["status"] == "active"
    token = hook.call("GET", f"/v1/requests/{rid}/credential", headers=as_request).get_json()["credential"]["token"]
    resource_server = {"Authorization": f"Bearer {INTROSPECTION_TOKEN}"}
    active = hook.call("POST", "/v1/introspect", data={"token": token}, headers=resource_server).get_json()
    assert active["active"] is True and active["jti"] == rid
    assert hook.call("DELETE", f"/v1/requests/{rid}", headers=as_request).get_json()["status"] == "revoked"
    assert hook.call("POST", "/v1/introspect", data={"token": token}, headers=resource_server).get_json() == {
        "active": False
    }
    assert hook.call("GET", f"/v1/requests/{rid}/credential", headers=as_request).status_code == 410
    for path in ("/.well-known/jwks.json", "/healthz", "/readyz", "/openapi.json", "/metrics"):
        assert hook.call("GET", path).status_code == 200


def test_a_request_in_every_status_matches_the_document(hook, state_dir):
    """`GET /v1/requests/{id}` in each status a request can reach, the credential's 200/409/410,
    and the releases: each answer validated against the served document (`hook.call`)."""
    jit = hook.jit
    seen: set[str] = set()

    def ask(action: str, **body) -> tuple[str, dict]:
        resp = hook.call("POST", "/v1/requests", json={"action": action, "reason": "r", **body}, headers=PIPELINE)
        assert resp.status_code == 201
        return resp.get_json()["id"], {"Authorization": f"Bearer {resp.get_json()['request_token']}"}

    def status(rid: str, auth: dict) -> str:
        resp = hook.call("GET", f"/v1/requests/{rid}", headers=auth)
        assert resp.status_code == 200
        seen.add(resp.get_json()["status"])
        return resp.get_json()["status"]

    def credential(rid: str, auth: dict) -> int:
        return hook.call("GET", f"/v1/requests/{rid}/credential", headers=auth).status_code

    # pending → approved → active → revoked, with the credential at each step
    rid, auth = ask("read-secret")
    assert status(rid, auth) == "pending" and credential(rid, auth) == 409
    jit.wait_for_message(rid)
    jit.approve(rid, "U0LEAD1")
    assert status(rid, auth) == "approved" and credential(rid, auth) == 409
    jit.work()
    assert status(rid, auth) == "active" and credential(rid, auth) == 200
    assert hook.call("DELETE", f"/v1/requests/{rid}", headers=auth).get_json()["status"] == "revoked"
    assert status(rid, auth) == "revoked" and credential(rid, auth) == 410

    # cancelled by its pipeline, then released again: nothing changes, still documented
    rid, auth = ask("read-secret")
    assert hook.call("DELETE", f"/v1/requests/{rid}", headers=auth).get_json()["status"] == "cancelled"
    assert hook.call("DELETE", f"/v1/requests/{rid}", headers=auth).get_json()["status"] == "cancelled"
    assert status(rid, auth) == "cancelled" and credential(rid, auth) == 410

    # denied with a reason, in Slack
    rid, auth = ask("read-secret")
    jit.wait_for_message(rid)
    jit.click("jit_deny", rid, "U0LEAD1", button_text="Deny")
    view = jit.drain(lambda: jit.slack.calls("views.open"), what="the deny dialog")[-1].params["view"]
    reason = {"reason": {"reason_input": "not now"}}
    submitted = jit.post_slack(view_submission(view["callback_id"], view["private_metadata"], reason, "U0LEAD1"))
    assert submitted.status_code == 200
    assert status(rid, auth) == "denied"

    # expired: a one-second grant runs out
    rid, auth = ask("quick", ttl="1s")
    jit.wait_for_message(rid)
    jit.approve(rid, "U0LEAD1")
    jit.drain(lambda: status(rid, auth) == "expired", what="the expiry")
    assert credential(rid, auth) == 410

    # failed: the grant command keeps failing
    (state_dir / "fail-grant").write_text("")
    rid, auth = ask("quick")
    jit.wait_for_message(rid)
    jit.approve(rid, "U0LEAD1")
    jit.drain(lambda: status(rid, auth) == "failed", what="the grant to fail")
    (state_dir / "fail-grant").unlink()

    # timed_out: nobody decides before pending_timeout
    start = now()
    with freeze_time(start) as frozen:
        rid, auth = ask("deploy-prod")
        frozen.tick(timedelta(minutes=21))
        time_out(jit.rt, rid, "")
        assert status(rid, auth) == "timed_out"

    assert seen == {s.value for s in Status}


@pytest.fixture
def windows(policy_file, state_dir):
    """The policy with `change-db`, requestable only during office hours in Paris."""
    policy_file.write_text(rules_policy_text(str(state_dir)))


def test_a_refusal_outside_the_change_windows_matches_the_document(windows, hook):
    """The 403 names when the next window opens: a field the document must list."""
    with freeze_time("2026-03-27T17:30:00Z"):  # Friday 18:30 in Paris
        resp = hook.call("POST", "/v1/requests", json={"action": "change-db", "reason": "r"}, headers=PIPELINE)
    assert resp.status_code == 403
    assert resp.get_json()["error"] == "outside_window"
    assert resp.get_json()["next_opening"] == "2026-03-30T07:00:00.000Z"


# ------------------------------------------------------------------------ the document


def test_openapi_document_is_valid_and_covers_every_hook_route(hook):
    doc = hook.doc
    assert doc["openapi"].startswith("3.1")
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": doc["components"]["securitySchemes"]["bearerAuth"]["description"],
    }
    routes = set()
    for rule in hook.app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.rule == "/slack/events":
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            routes.add((method.lower(), path))
    documented = {(m, p) for p, item in doc["paths"].items() for m in item if m != "parameters"}
    assert routes == documented
    for path, item in doc["paths"].items():
        for name in re.findall(r"\{([^}]+)\}", path):
            assert any(p["name"] == name and p["in"] == "path" for p in item.get("parameters", [])), path
    # the request body's schema lists exactly the fields the server accepts, with its limits
    from bot.core.model import AccessRequest, Status
    from bot.request.responses import RequestView
    from bot.request.schemas import MAX_REASON, RequestBody

    create = doc["components"]["schemas"]["CreateRequest"]
    assert set(create["properties"]) == set(RequestBody.model_fields)
    assert create["properties"]["reason"]["maxLength"] == MAX_REASON
    view = doc["components"]["schemas"]["AccessRequest"]
    sample = AccessRequest.from_hash(
        {
            "id": "x",
            "action": "a",
            "pipeline": "p",
            "ttl_s": "60",
            "status": "pending",
            "created_ms": "0",
            "pending_until_ms": "0",
            "approvals_required": "1",
        }
    )
    assert set(view["properties"]) == set(RequestView.of(sample).to_json()) == set(view["required"])
    assert view["properties"]["status"]["enum"] == [s.value for s in Status]


def test_openapi_document_passes_the_spec_validator(hook):
    validator = pytest.importorskip("openapi_spec_validator")
    validator.validate(hook.doc)


# ------------------------------------------------------------------------ tokens and limits


def test_tokens_are_compared_in_constant_time_against_every_pipeline(hook, monkeypatch):
    """Behaviour, not timing: every configured digest goes through hmac.compare_digest, even
    after a match, so neither the result nor the work done depends on where the token matched."""
    import hmac

    from bot.core.policy import policy as policy_mod
    from bot.request import service as request_service

    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(policy_mod.hmac, "compare_digest", spy)
    pol = hook.jit.rt.policy
    configured = {n for n, p in pol.model.pipelines.items() if p.token_sha256}
    assert len(configured) >= 2
    for token, expected in (
        (WEB_TOKEN, "web-ci"),
        (OTHER_TOKEN, "other-ci"),
        ("nope", None),
        (WEB_TOKEN[:-1] + "X", None),
    ):
        calls.clear()
        assert pol.pipeline_for_token(token) == expected
        digest = hashlib.sha256(token.encode()).hexdigest()
        assert len(calls) == len(configured) and all(a == digest for a, _ in calls)
        assert {b for _, b in calls} == {pol.model.pipelines[n].token_sha256 for n in configured}

    # request tokens: compared as hashes with secrets.compare_digest, never with ==

    seen = []
    real_secrets = request_service.secrets.compare_digest
    monkeypatch.setattr(request_service.secrets, "compare_digest", lambda a, b: seen.append(1) or real_secrets(a, b))
    rid = hook.pending["id"]
    assert hook.jit.status(rid, token=hook.pending["request_token"]).status_code == 200
    assert seen
    assert hook.jit.status(rid, token=hook.pending["request_token"][:-1]).status_code == 404


@pytest.fixture
def limited(jit_env, monkeypatch):
    monkeypatch.setenv("JIT_RATE_LIMIT", "3")


def test_rate_limit_per_pipeline_answers_429_with_retry_after(limited, jit):
    first = [jit.ask("read-secret")["id"] for _ in range(3)][0]
    count = len(jit.rt.redis.keys("jit:req:*"))
    audit = jit.rt.audit.count()
    resp = jit.http.post(
        "/v1/requests", json={"action": "read-secret", "reason": "r"}, headers={"Authorization": f"Bearer {WEB_TOKEN}"}
    )
    assert resp.status_code == 429
    assert resp.get_json()["error"] == "rate_limited"
    assert 1 <= int(resp.headers["Retry-After"]) <= 60
    assert len(jit.rt.redis.keys("jit:req:*")) == count and jit.rt.audit.count() == audit
    # per pipeline: another pipeline is not limited by web-ci's burst
    jit.ask("read-secret", token=OTHER_TOKEN)
    # follow-ups are never limited
    assert jit.status(first).status_code == 200
    assert jit.release(first).status_code == 200
