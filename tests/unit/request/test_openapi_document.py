"""The OpenAPI document's bodies are the models' JSON Schema, its limits the enforced ones, and the
models serialise exactly what the hook has always sent."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime

import jsonschema
import pytest
from pydantic import ConfigDict, Field

from bot.core import errors as E
from bot.core.clock import DURATION, MAX_DURATION_S
from bot.core.model import AccessRequest
from bot.request.http import openapi
from bot.request.http.limits import MAX_BODY, MAX_IDEMPOTENCY_KEY, MAX_WAIT
from bot.request.responses import CreatedRequest, Error, Introspection, RequestView
from bot.request.schemas import MAX_REASON, RequestBody, parse_body


def models_schemas(models) -> dict:
    """What `components.schemas` must be: each model's own JSON Schema, its nested models beside it."""
    expected = {}
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        expected.update(schema.pop("$defs", {}))
        expected[model.model_config.get("title") or model.__name__] = schema
    return expected


def assert_components_are_the_models(doc: dict, models=openapi.MODELS) -> None:
    assert doc["components"]["schemas"] == models_schemas(models)


def test_the_served_components_are_the_models_json_schema():
    doc = openapi.document("https://jit.example")
    assert_components_are_the_models(doc)
    names = set(doc["components"]["schemas"])
    assert {"CreateRequest", "AccessRequest", "CreatedRequest", "Approvals", "Credential", "Error"} <= names
    assert {"Introspection", "Jwks", "Jwk", "Ok"} <= names
    # every $ref in the document names a component
    refs = set()

    def walk(node):
        if isinstance(node, dict):
            if "$ref" in node:
                refs.add(node["$ref"].removeprefix("#/components/schemas/"))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(doc)
    assert refs and refs <= names


def test_a_document_edited_on_one_side_only_is_caught():
    doc = openapi.document()
    drifted = copy.deepcopy(doc)
    drifted["components"]["schemas"]["CreateRequest"]["properties"]["reason"]["maxLength"] = MAX_REASON + 1
    with pytest.raises(AssertionError):
        assert_components_are_the_models(drifted)
    drifted = copy.deepcopy(doc)
    drifted["components"]["schemas"]["AccessRequest"]["properties"].pop("revoke_pending")
    with pytest.raises(AssertionError):
        assert_components_are_the_models(drifted)


def test_a_model_edited_alone_changes_the_document(monkeypatch):
    """A tighter limit on the model is the document's limit too: nothing restates it by hand."""

    class TighterBody(RequestBody):
        model_config = ConfigDict(title="CreateRequest")
        reason: str = Field(min_length=1, max_length=42)

    models = tuple(TighterBody if m is RequestBody else m for m in openapi.MODELS)
    monkeypatch.setattr(openapi, "MODELS", models)
    doc = openapi.document()
    assert doc["components"]["schemas"]["CreateRequest"]["properties"]["reason"]["maxLength"] == 42
    assert_components_are_the_models(doc, models)


def test_the_documented_limits_are_the_enforced_ones():
    doc = openapi.document()
    create = doc["components"]["schemas"]["CreateRequest"]
    assert set(create["properties"]) == set(RequestBody.model_fields)
    assert create["properties"]["reason"]["maxLength"] == MAX_REASON
    integer, text, null = create["properties"]["ttl"]["oneOf"]
    assert (integer["maximum"], text["pattern"], null) == (MAX_DURATION_S, DURATION.pattern, {"type": "null"})
    post = doc["paths"]["/v1/requests"]["post"]
    assert str(MAX_BODY) in post["requestBody"]["description"]
    assert post["parameters"][0]["schema"]["maxLength"] == MAX_IDEMPOTENCY_KEY
    wait = doc["paths"]["/v1/requests/{request_id}"]["get"]["parameters"][0]
    assert wait["name"] == "wait" and wait["schema"]["maximum"] == MAX_WAIT


LONG = "x" * (MAX_REASON + 1)


@pytest.mark.parametrize(
    "body",
    [
        {"action": "deploy", "reason": "release 4.2"},
        {"action": "deploy", "reason": "r", "ttl": "15m", "requested_by": "alice", "break_glass": True},
        {"action": "deploy", "reason": "r", "context": {"repository": "acme/web", "run_url": "https://ci/1"}},
        {"action": "deploy", "reason": "r", "context": {"k" + str(i): "v" for i in range(20)}},
        {"action": "deploy", "reason": "   "},
        {"action": "deploy", "reason": LONG},
        {"action": "", "reason": "r"},
        {"action": "a" * 65, "reason": "r"},
        {"action": "deploy"},
        {"action": "deploy", "reason": "r", "extra": 1},
        {"action": "deploy", "reason": "r", "break_glass": "yes"},
        {"action": "deploy", "reason": "r", "requested_by": ""},
        {"action": "deploy", "reason": "r", "context": {"Repo": "x"}},
        {"action": "deploy", "reason": "r", "context": {"repository": "x" * 501}},
        {"action": "deploy", "reason": "r", "context": {"run_url": "javascript:alert(1)"}},
        {"action": "deploy", "reason": "r", "context": {"k" + str(i): "v" for i in range(21)}},
        {"action": "deploy", "reason": "r", "context": {"n": 1}},
    ],
)
def test_the_document_and_the_validation_agree_on_a_body(body):
    """What the published schema accepts, the hook accepts, and the other way round (ttl's value
    is read later, by the service, so it is not part of this)."""
    schema = {**openapi.document()["components"]["schemas"]["CreateRequest"]}
    documented = jsonschema.Draft202012Validator(schema).is_valid(body)
    try:
        parse_body(body)
        accepted = True
    except E.BadRequest:
        accepted = False
    assert documented == accepted, (body, documented, accepted)


# ------------------------------------------------------------------ what the models send


def full_request() -> AccessRequest:
    fields = {
        "id": "r1",
        "action": "deploy-prod",
        "pipeline": "web-ci",
        "reason": "release 4.2",
        "ttl_s": "900",
        "status": "revoked",
        "created_ms": "1767225600123",
        "pending_until_ms": "1767226800123",
        "approvals_required": "2",
        "requested_by": "alice@example.com",
        "context": json.dumps({"repository": "acme/web", "run_url": "https://ci.example/run/1"}),
        "verified_keys": "run_url,repository,requested_by",
        "decided_by": "U0LEAD2",
        "issued_ms": "1767225701000",
        "expires_ms": "1767226601000",
        "revoked_by": "U0LEAD2",
        "error": "backend said no",
        "revoke_pending": "1",
    }
    return AccessRequest.from_hash(fields, {"U0LEAD1": "1767225650000", "U0LEAD2": "1767225640000"})


#: What `GET /v1/requests/{id}` has always answered for `full_request()` (AccessRequest.public()).
FULL_VIEW = {
    "id": "r1",
    "action": "deploy-prod",
    "pipeline": "web-ci",
    "status": "revoked",
    "reason": "release 4.2",
    "requested_by": "alice@example.com",
    "ttl": 900,
    "context": {"repository": "acme/web", "run_url": "https://ci.example/run/1"},
    "approvals": {"count": 2, "required": 2, "by": ["U0LEAD2", "U0LEAD1"]},
    "decided_by": "U0LEAD2",
    "deny_reason": None,
    "created_at": "2026-01-01T00:00:00.123Z",
    "pending_until": "2026-01-01T00:20:00.123Z",
    "issued_at": "2026-01-01T00:01:41.000Z",
    "expires_at": "2026-01-01T00:16:41.000Z",
    "revoked_by": "U0LEAD2",
    "revoke_pending": True,
    "verified_fields": ["repository", "requested_by", "run_url"],
    "error": "backend said no",
}


def test_a_request_is_sent_as_it_always_was():
    assert RequestView.of(full_request()).to_json() == FULL_VIEW
    created = CreatedRequest.of(full_request(), request_token="tok", url="https://jit.example/v1/requests/r1")
    assert created.to_json() == {**FULL_VIEW, "request_token": "tok", "url": "https://jit.example/v1/requests/r1"}


def test_errors_carry_next_opening_only_outside_the_window():
    opening = datetime(2026, 3, 30, 7, tzinfo=UTC)
    refusal = E.OutsideWindow("change-db", opening, ["mon-fri 09:00-18:00 Europe/Paris"])
    assert Error.of(refusal).to_json() == {
        "error": "outside_window",
        "message": refusal.message,
        "next_opening": "2026-03-30T07:00:00.000Z",
    }
    assert Error.of(E.OutsideWindow("change-db", None, ["x"])).to_json()["next_opening"] is None
    assert Error.of(E.Gone()).to_json() == {"error": "gone", "message": "The credential has expired or was revoked."}


def test_introspection_sends_the_claims_and_nothing_for_an_inactive_token():
    assert Introspection.inactive().to_json() == {"active": False}
    claims = {"sub": "web-ci", "act": "read-secret", "jti": "r1", "iat": 1, "nbf": 1, "exp": 2, "team": "web"}
    assert Introspection.of(claims).to_json() == {"active": True, "token_type": "Bearer", **claims}
    # a claim of the policy's cannot turn an answer active (or change its token type)
    assert Introspection.of({**claims, "active": "no", "token_type": "x"}).to_json()["active"] is True
