"""The OpenAPI 3.1 document of the pipeline hook, served at `GET /openapi.json`.

The bodies are the pydantic models the hook validates and answers with (`bot/request/schemas.py`,
`bot/request/responses.py`): their JSON Schema is `components.schemas`, so the document cannot
drift from the server. The paths are written here, with the limits of the code that enforces
them (`limits.py`); tests validate live responses against the served document.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from bot.request.http.limits import (
    CLIENT_CACHE_CONTROL,
    CLIENT_CONTENT_TYPE,
    MAX_BODY,
    MAX_IDEMPOTENCY_KEY,
    MAX_SESSION_BODY,
    MAX_WAIT,
)
from bot.request.responses import (
    CreatedRequest,
    Credential,
    Error,
    Introspection,
    Jwks,
    Ok,
    RequestView,
    SessionReceipt,
)
from bot.request.schemas import ExtendBody, RequestBody, SessionBody

OPENAPI_VERSION = "3.1.0"

REF_TEMPLATE = "#/components/schemas/{model}"
#: The bodies the paths name; each component is its model's JSON Schema, under the model's title.
MODELS: tuple[type[BaseModel], ...] = (
    Error,
    RequestBody,
    ExtendBody,
    RequestView,
    CreatedRequest,
    Credential,
    Introspection,
    Jwks,
    Ok,
    SessionBody,
    SessionReceipt,
)


def _name(model: type[BaseModel]) -> str:
    return model.model_config.get("title") or model.__name__


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF_TEMPLATE.format(model=_name(model))}


def schemas() -> dict[str, Any]:
    """`components.schemas`: every model's JSON Schema, and the models they nest (`$defs`)."""
    out: dict[str, Any] = {}

    def add(name: str, schema: dict[str, Any]) -> None:
        if out.setdefault(name, schema) != schema:
            raise ValueError(f"two different schemas are both called {name}")

    for model in MODELS:
        schema = model.model_json_schema(ref_template=REF_TEMPLATE)
        for name, nested in schema.pop("$defs", {}).items():
            add(name, nested)
        add(_name(model), schema)
    return out


def _json(schema: dict[str, Any], description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        out["headers"] = headers
    return out


def _err(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    return _json(_ref(Error), description, headers)


_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer", "minimum": 1}}}
_WWW_AUTH = {"WWW-Authenticate": {"schema": {"type": "string"}}}
_TOO_SLOW = _err(
    "`too_slow`: the body did not arrive within JIT_HTTP_BODY_TIMEOUT_S of the headers; nothing was "
    "done and the connection is closed"
)
_UNAVAILABLE = _err(
    "`unavailable`: storage unreachable, or `overloaded`: this server is at its in-flight bound "
    "(JIT_HOOK_MAX_IN_FLIGHT, lower while requests answer later than JIT_HOOK_LATENCY_BUDGET_MS); "
    "nothing was done — retry after Retry-After",
    _RETRY_AFTER,
)
_UNAUTHORIZED = _err("missing or invalid bearer token", _WWW_AUTH)
_NOT_FOUND = _err("no such request, or the caller may not see it")

_REQUEST_ID = {
    "name": "request_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "the id `POST /v1/requests` returned",
}


def document(server_url: str | None = None) -> dict[str, Any]:
    """The whole OpenAPI document; `server_url` is the bot's public URL (JIT_PUBLIC_URL)."""
    bearer = [{"bearerAuth": []}]
    public: list[dict[str, list[str]]] = []
    follow_up_note = "Bearer: the creating pipeline's token or the request's `request_token`; anyone else gets 404."
    doc: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "jit pipeline hook",
            "version": "1",
            "description": "Just-in-time credentials for CI/CD pipelines, approved in Slack.",
        },
        "components": {
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "a pipeline's static token, a CI OIDC token, or a request_token",
                }
            },
            "schemas": schemas(),
        },
        "security": bearer,
        "paths": {
            "/v1/requests": {
                "post": {
                    "operationId": "createRequest",
                    "summary": "Ask for access",
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
                            "description": "a retried POST with the same key returns the same request",
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "description": f"at most {MAX_BODY} bytes",
                        "content": {"application/json": {"schema": _ref(RequestBody)}},
                    },
                    "responses": {
                        "201": _json(_ref(CreatedRequest), "created", {"Location": {"schema": {"type": "string"}}}),
                        "200": _json(_ref(CreatedRequest), "an earlier request with this Idempotency-Key"),
                        "400": _err("malformed JSON, a missing/over-long/unknown field, a bad ttl"),
                        "401": _UNAUTHORIZED,
                        "403": _err(
                            "this pipeline may not request that action, OIDC claims refused, outside the "
                            "change windows, or the requester is unknown where the policy refuses that"
                        ),
                        "404": _err("unknown action"),
                        "408": _TOO_SLOW,
                        "413": _err(f"body larger than {MAX_BODY} bytes"),
                        "415": _err("Content-Type is not application/json"),
                        "422": _err("this Idempotency-Key was already used with another body"),
                        "429": _err("rate limited (JIT_RATE_LIMIT per pipeline per minute)", _RETRY_AFTER),
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/v1/requests/{request_id}": {
                "parameters": [_REQUEST_ID],
                "get": {
                    "operationId": "getRequest",
                    "summary": "Read a request; optionally long-poll until its status changes",
                    "description": follow_up_note,
                    "parameters": [
                        {
                            "name": "wait",
                            "in": "query",
                            "required": False,
                            "schema": {"type": "number", "minimum": 0, "maximum": MAX_WAIT, "default": 0},
                            "description": "seconds to hold the call while the request is pending or approved",
                        }
                    ],
                    "responses": {
                        "200": _json(_ref(RequestView), "the request"),
                        "400": _err("wait is not a number from 0 to 60"),
                        "401": _UNAUTHORIZED,
                        "404": _NOT_FOUND,
                        "429": _err(
                            "too many long-polls open (JIT_MAX_LONG_POLLS_PER_PIPELINE per pipeline, 4 per request)",
                            _RETRY_AFTER,
                        ),
                        "503": _UNAVAILABLE,
                    },
                },
                "delete": {
                    "operationId": "releaseRequest",
                    "summary": "Cancel a pending request or revoke an active grant now",
                    "description": follow_up_note + " Releasing a finished request changes nothing.",
                    "responses": {
                        "200": _json(_ref(RequestView), "the request after the release"),
                        "401": _UNAUTHORIZED,
                        "404": _NOT_FOUND,
                        "409": _err("the request was decided meanwhile"),
                        "503": _UNAVAILABLE,
                    },
                },
            },
            "/v1/requests/{request_id}/extend": {
                "parameters": [_REQUEST_ID],
                "post": {
                    "operationId": "extendRequest",
                    "summary": "Ask for more time on an active grant",
                    "description": follow_up_note
                    + " The window grows by `ttl`, measured from the grant's start, within the action's "
                    "`extend.max_total`; `expires_at` only ever moves later. With `extend.approvals_required: 0` "
                    "it applies at once (200); otherwise approvers approve it on the request's message (202) "
                    "and `expires_at` moves when they have. A `token` credential is re-issued with the new "
                    "`exp`: fetch it again.",
                    "requestBody": {
                        "required": True,
                        "description": f"at most {MAX_BODY} bytes",
                        "content": {"application/json": {"schema": _ref(ExtendBody)}},
                    },
                    "responses": {
                        "200": _json(_ref(RequestView), "extended: the request with its new expires_at"),
                        "202": _json(_ref(RequestView), "waiting for approval on the request's message"),
                        "400": _err("malformed JSON, an unknown field, a bad ttl"),
                        "401": _UNAUTHORIZED,
                        "403": _err("the action has no `extend:` in the policy"),
                        "404": _NOT_FOUND,
                        "409": _err("the grant is not active, or another extension waits for approval"),
                        "408": _TOO_SLOW,
                        "413": _err(f"body larger than {MAX_BODY} bytes"),
                        "415": _err("Content-Type is not application/json"),
                        "422": _err("the window would exceed extend.max_total (or outlast its change window)"),
                        "503": _UNAVAILABLE,
                    },
                },
            },
            "/v1/requests/{request_id}/credential": {
                "parameters": [_REQUEST_ID],
                "get": {
                    "operationId": "getCredential",
                    "summary": "Fetch the credential while the grant is active",
                    "description": follow_up_note,
                    "responses": {
                        "200": _json(
                            _ref(Credential),
                            "the credential",
                            {"Cache-Control": {"schema": {"const": "no-store"}}},
                        ),
                        "401": _UNAUTHORIZED,
                        "404": _NOT_FOUND,
                        "409": _err("not issued yet"),
                        "410": _err("expired, revoked or never issued"),
                        "503": _UNAVAILABLE,
                    },
                },
            },
            "/v1/requests/{request_id}/session": {
                "parameters": [_REQUEST_ID],
                "post": {
                    "operationId": "recordSession",
                    "summary": "Record what `jit run`'s command did with the grant, once it has ended",
                    "description": "Bearer: the request's `request_token` only. Once per request, after its grant "
                    "was released, revoked or expired. Stored encrypted with the request (same retention); the "
                    "audit entry `session.ended` carries `transcript_sha256`, never the transcript.",
                    "requestBody": {
                        "required": True,
                        "description": f"at most {MAX_SESSION_BODY} bytes; the transcript at most "
                        "JIT_SESSION_TRANSCRIPT_MAX_BYTES (default 1 MiB) as UTF-8",
                        "content": {"application/json": {"schema": _ref(SessionBody)}},
                    },
                    "responses": {
                        "201": _json(_ref(SessionReceipt), "recorded"),
                        "400": _err("malformed JSON, a missing/unknown field, a digest that does not match"),
                        "401": _UNAUTHORIZED,
                        "404": _NOT_FOUND,
                        "409": _err("recorded already (`session_recorded`), or the grant has not ended (`not_ended`)"),
                        "408": _TOO_SLOW,
                        "413": _err("body or transcript larger than the cap"),
                        "415": _err("Content-Type is not application/json"),
                        "503": _UNAVAILABLE,
                    },
                },
            },
            "/v1/introspect": {
                "post": {
                    "operationId": "introspect",
                    "summary": "RFC 7662 token introspection",
                    "description": "Bearer: a JIT_INTROSPECTION_TOKENS token (AUDIENCE=TOKEN); a token issued "
                    'for another audience answers {"active": false}, like an unknown one.',
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/x-www-form-urlencoded": {
                                "schema": {
                                    "type": "object",
                                    "required": ["token"],
                                    "properties": {"token": {"type": "string", "minLength": 1}},
                                }
                            }
                        },
                    },
                    "responses": {
                        "200": _json(_ref(Introspection), "whether the token's grant is active"),
                        "400": _err("form field `token` is missing"),
                        "401": _UNAUTHORIZED,
                        "408": _TOO_SLOW,
                        "413": _err(f"body larger than {MAX_BODY} bytes"),
                        "503": _UNAVAILABLE,
                    },
                }
            },
            "/v1/client.py": {
                "get": {
                    "operationId": "getClient",
                    "summary": "The pipeline client as one stdlib-only Python file",
                    "description": "Byte for byte the `jit_client` module this server ships (`client/jit_client.py`, "
                    "also the `jit-client` package), for a CI job with nothing installed: "
                    "`curl -fsS $JIT_URL/v1/client.py -o jit_client.py && python3 jit_client.py request …`.",
                    "security": public,
                    "parameters": [
                        {
                            "name": "If-None-Match",
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                            "description": "an ETag from an earlier answer: 304 while the file is the same",
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "the file",
                            "headers": {
                                "ETag": {
                                    "description": "the file's sha256 (hex), quoted",
                                    "schema": {"type": "string", "pattern": '^"[0-9a-f]{64}"$'},
                                },
                                "Cache-Control": {"schema": {"const": CLIENT_CACHE_CONTROL}},
                            },
                            "content": {CLIENT_CONTENT_TYPE.split(";")[0]: {"schema": {"type": "string"}}},
                        },
                        "304": {"description": "unchanged since the ETag given in If-None-Match"},
                    },
                }
            },
            "/.well-known/jwks.json": {
                "get": {
                    "operationId": "jwks",
                    "summary": "Public keys that verify the `token` backend's JWTs",
                    "security": public,
                    "responses": {"200": _json(_ref(Jwks), "the key set")},
                }
            },
            "/.well-known/jit-audit-keys.json": {
                "get": {
                    "operationId": "auditKeys",
                    "summary": "Public keys that verify the audit trail's signatures",
                    "security": public,
                    "responses": {"200": _json(_ref(Jwks), "the key set")},
                }
            },
            "/healthz": {
                "get": {
                    "operationId": "healthz",
                    "summary": "The process is up",
                    "security": public,
                    "responses": {"200": _json(_ref(Ok), "up")},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readyz",
                    "summary": "Redis is reachable",
                    "security": public,
                    "responses": {"200": _json(_ref(Ok), "ready"), "503": _err("Redis is not reachable")},
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics (request outcomes, queue depth, Slack errors)",
                    "description": "with JIT_METRICS_TOKEN set, that token as a bearer; without it, local clients only",
                    "security": public,
                    "responses": {
                        "200": {
                            "description": "Prometheus text exposition format",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "401": _err("JIT_METRICS_TOKEN is set and the bearer token is not it", _WWW_AUTH),
                        "403": _err("no JIT_METRICS_TOKEN, and the client is not on this host"),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "security": public,
                    "responses": {"200": _json({"type": "object"}, "the OpenAPI document")},
                }
            },
        },
    }
    doc["paths"].update(_gate_webhooks(public))
    if server_url:
        doc["servers"] = [{"url": server_url.rstrip("/") or "/"}]
    return doc


def _gate_webhooks(public: list[dict[str, list[str]]]) -> dict[str, Any]:
    """The deployment gates' webhooks (docs/gates.md): called by GitHub and GitLab, not pipelines."""

    def hook(op: str, summary: str, auth: str, extra: dict[str, Any]) -> dict[str, Any]:
        return {
            "post": {
                "operationId": op,
                "summary": summary,
                "description": auth,
                "security": public,
                "requestBody": {
                    "required": True,
                    "description": "the platform's event, at most 1 MiB",
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "responses": {
                    "200": _json({"type": "object"}, "an event jit does not act on, or one it knew already"),
                    "202": _json(
                        {"type": "object"}, "the deployment is held: `gate`, `request`, `status` or `refused`"
                    ),
                    "400": _err("malformed JSON or event"),
                    "404": _err("this platform's gates are not configured"),
                    "409": _err("the delivery was handled already (a replay)"),
                    "408": _TOO_SLOW,
                    "413": _err("the body is over 1 MiB"),
                    "422": _err("the platform has no such run or deployment"),
                    "502": _err("asking the platform failed; the delivery may be redelivered"),
                    **extra,
                },
            }
        }

    return {
        "/github/webhook": hook(
            "githubWebhook",
            "GitHub App webhook: deployment protection rules",
            "Signed: `X-Hub-Signature-256` over the raw body with the webhook secret; `X-GitHub-Delivery` once.",
            {
                "401": _err("the signature does not match"),
                "403": _err("GitHub knows no such installation of the app"),
            },
        ),
        "/gitlab/webhook": hook(
            "gitlabWebhook",
            "GitLab deployment webhook: deployment approvals",
            "`X-Gitlab-Token` is the hook's secret token; `X-Gitlab-Event-UUID` once.",
            {"401": _err("the token is not the hook's")},
        ),
    }
