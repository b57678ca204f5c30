"""The `/v1` endpoints pipelines call, plus JWKS, introspection and health checks."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import secrets
import time
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from flask import Blueprint, Response, current_app, g, jsonify, request

from bot.core import errors as E
from bot.core.clock import now
from bot.core.model import UNDECIDED, Status
from bot.request.http.auth import Unauthorized, any_caller, bearer_token, pipeline_caller
from bot.request.http.limits import (
    CLIENT_CACHE_CONTROL,
    CLIENT_CONTENT_TYPE,
    CLIENT_MODULE,
    MAX_BODY,
    MAX_IDEMPOTENCY_KEY,
    MAX_JSON_DEPTH,
    MAX_SESSION_BODY,
    MAX_WAIT,
)
from bot.request.http.openapi import document
from bot.request.responses import (
    Answer,
    CreatedRequest,
    Credential,
    Error,
    Introspection,
    Jwks,
    Ok,
    RequestView,
    SessionReceipt,
)
from bot.request.schemas import parse_body, parse_extend_body, parse_session
from bot.web import bounded_input

bp = Blueprint("hook", __name__)
log = logging.getLogger("jit.hook")


def rt():
    return current_app.config["JIT_RUNTIME"]


def answer(body: Answer, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON answer, serialised by its model: what the OpenAPI document says is what is sent."""
    resp = jsonify(body.to_json())
    resp.status_code = status
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return answer(Error(error=code, message=message), status, headers)


def too_slow() -> Response:
    """408: the body was cut off mid-way, so the connection cannot carry another request."""
    seconds = current_app.config.get(bounded_input.DEADLINE_CONFIG)
    return error(
        408, "too_slow", f"the request body did not arrive within {seconds:g} seconds", {"Connection": "close"}
    )


#: Never refused for load: endpoints that answer from memory (health checks must tell the truth),
#: and giving a grant back (`DELETE`), which ends access: a pipeline done with its grant must never
#: be told to keep it a while longer.
_ALWAYS_ADMITTED = {
    "hook.healthz",
    "hook.readyz",
    "hook.openapi",
    "hook.client_source",
    "hook.jwks",
    "hook.audit_keys",
    "hook.release_request",
}


@bp.before_request
def _admit():
    """Backpressure (bot/request/http/admission.py): over this process's in-flight bound (which
    shrinks while requests take longer than their latency budget), a quick 503 with Retry-After,
    before anything is read or stored. Long-polls are bounded per pipeline."""
    if request.endpoint in _ALWAYS_ADMITTED or request.method == "OPTIONS" or _long_poll_asked():
        return None
    admission = current_app.config["JIT_ADMISSION"]
    admitted = admission.enter()
    if admitted is None:
        return error(
            503,
            "overloaded",
            "the server is at capacity; retry after the Retry-After seconds",
            {"Retry-After": str(admission.retry_after_s)},
        )
    g.jit_admitted = admitted
    return None


def _long_poll_asked() -> bool:
    try:
        return request.method == "GET" and float(request.args.get("wait", "0")) > 0
    except ValueError:
        return False  # refused as a bad request, under the bound like any other


@bp.after_request
def _answered(resp: Response) -> Response:
    g.jit_answered = resp.status_code
    return resp


@bp.teardown_request
def _leave(exc: BaseException | None) -> None:
    """Give the place back. Only a request answered with success tells the bound how long work
    takes (one refused or failed, anyone can send), and only from the moment its body was read:
    a sender that trickles its body must not be able to talk the bound down for everyone else."""
    admitted = g.pop("jit_admitted", None)
    if admitted is not None:
        measured = g.pop("jit_answered", 500) < 400
        started = g.pop("jit_body_read", None)  # the work's start: the body's upload is the sender's time
        current_app.config["JIT_ADMISSION"].leave(admitted if started is None else started, measured=measured)


def _body_read() -> None:
    """The request's body is in: from here on its time is the server's work (see _leave)."""
    if "jit_admitted" in g:
        g.jit_body_read = current_app.config["JIT_ADMISSION"].now()


@bp.errorhandler(E.JitError)
def _jit_error(e: E.JitError):
    """Every refusal of the domain; `outside_window` carries the next opening, so a pipeline can say
    when to retry."""
    headers = None
    if getattr(e, "retry_after_s", None):
        headers = {"Retry-After": str(e.retry_after_s)}
    return answer(Error.of(e), e.http_status, headers)


@bp.errorhandler(Unauthorized)
def _unauthorized(e: Unauthorized):
    headers = {"WWW-Authenticate": 'Bearer realm="jit"'} if e.status == 401 else None
    code = {401: "unauthorized", 403: "forbidden"}.get(e.status, "unavailable")
    return error(e.status, code, e.message, headers)


def _oidc():
    return current_app.config.get("JIT_OIDC")


def _read_json(cap: int = MAX_BODY) -> Any:
    ctype = (request.mimetype or "").lower()
    if ctype != "application/json":
        raise _Abort(error(415, "unsupported_media_type", "send Content-Type: application/json"))
    try:
        raw = bounded_input.request_body(cap)
        _body_read()
        return bounded_input.loads(raw, MAX_JSON_DEPTH)
    except bounded_input.TooSlow:
        raise _Abort(too_slow()) from None
    except bounded_input.TooLarge:
        raise _Abort(error(413, "too_large", f"the body is larger than {cap} bytes")) from None
    except bounded_input.TooDeep as e:
        raise _Abort(error(400, "malformed_json", str(e))) from None
    except ValueError:  # UnicodeDecodeError and json's errors included
        raise _Abort(error(400, "malformed_json", "the body is not valid JSON")) from None


def _read_form() -> dict[str, str]:
    """An `application/x-www-form-urlencoded` body (RFC 7662's), within the hook's cap; else {}."""
    if (request.mimetype or "").lower() != "application/x-www-form-urlencoded":
        return {}
    try:
        raw = bounded_input.request_body(MAX_BODY)
    except bounded_input.TooSlow:
        raise _Abort(too_slow()) from None
    except bounded_input.TooLarge:
        raise _Abort(error(413, "too_large", f"the body is larger than {MAX_BODY} bytes")) from None
    _body_read()
    return dict(parse_qsl(raw.decode("utf-8", errors="replace"), keep_blank_values=True))


class _Abort(Exception):
    def __init__(self, response: Response) -> None:
        self.response = response


@bp.errorhandler(_Abort)
def _abort(e: _Abort):
    return e.response


# ------------------------------------------------------------------------- requests


@bp.post("/v1/requests")
def create_request():
    runtime = rt()
    policy = runtime.policy
    caller = pipeline_caller(request, policy, _oidc())
    runtime.limiter.check(caller.pipeline)
    data = _read_json()
    body = parse_body(data)
    idem = request.headers.get("Idempotency-Key")
    if idem is not None and not (0 < len(idem) <= MAX_IDEMPOTENCY_KEY):
        return error(400, "bad_request", f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
    created = runtime.requests.create(caller.pipeline, body, idem, caller.verified)
    path = f"/v1/requests/{created.request.id}"
    out = CreatedRequest.of(
        created.request,
        request_token=created.request_token,
        url=runtime.settings.jit_public_url.rstrip("/") + path,
    )
    return answer(out, 201 if created.created else 200, {"Location": path})


def _follow_up(request_id: str):
    """Who may read or use this request: its request_token, or an OIDC token of the same run."""
    runtime = rt()
    caller = any_caller(request, runtime.policy, _oidc())
    return runtime.requests.authorize_follow_up(request_id, caller.bearer, caller.verified, caller.pipeline)


@bp.get("/v1/requests/<request_id>")
def get_request(request_id: str):
    raw_wait = request.args.get("wait", "0")
    try:
        wait = float(raw_wait)
    except ValueError:
        return error(400, "bad_request", "wait must be a number of seconds (0 to 60)")
    if not (0 <= wait <= MAX_WAIT) or wait != wait:
        return error(400, "bad_request", "wait must be between 0 and 60 seconds")
    req = _follow_up(request_id).request
    if wait > 0 and req.status in UNDECIDED:
        # each open poll holds a connection and a greenlet: bounded per pipeline and per request
        with current_app.config["JIT_LONG_POLLS"].hold(req.pipeline, req.id, wait):
            req = _long_poll(request_id, req.status, wait) or req
    return answer(RequestView.of(req))


def _long_poll(request_id: str, status: Status, wait: float):
    runtime = rt()
    deadline = time.monotonic() + wait
    waiters = current_app.config["JIT_WAITERS"]
    req = None
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or waiters.stopping:  # stopping: answer now, the client asks again
            return req
        ev = waiters.register(request_id)
        try:
            req = runtime.store.get(request_id)
            if req is None or req.status != status:
                return req
            ev.wait(min(remaining, 2.0))
        finally:
            waiters.unregister(request_id, ev)
        req = runtime.store.get(request_id)
        if req is None or req.status != status:
            return req


@bp.get("/v1/requests/<request_id>/credential")
def get_credential(request_id: str):
    credential, req = rt().grants.credential(_follow_up(request_id))
    grant = rt().policy.grants.get(req.action)
    body = Credential.of(credential, req, grant[0] if grant else None)
    return answer(body, headers={"Cache-Control": "no-store"})


@bp.post("/v1/requests/<request_id>/extend")
def extend_request(request_id: str):
    """More time for an active grant: 200 applied, 202 waiting for approval (same message)."""
    follow_up = _follow_up(request_id)
    body = parse_extend_body(_read_json())
    req = follow_up.request
    done = rt().extensions.ask(req, f"pipeline:{req.pipeline}", body.ttl, body.reason)
    return answer(RequestView.of(done.request), 200 if done.applied else 202)


@bp.delete("/v1/requests/<request_id>")
def release_request(request_id: str):
    req = rt().revokes.release(_follow_up(request_id))
    return answer(RequestView.of(req))


@bp.post("/v1/requests/<request_id>/session")
def record_session(request_id: str):
    """What `jit run`'s command did with the grant, once its grant has ended: the request's own
    request_token only (not an OIDC token of the run: the record is the client's to send)."""
    runtime = rt()
    follow_up = runtime.requests.authorize_follow_up(request_id, bearer_token(request))
    body = parse_session(_read_json(MAX_SESSION_BODY))
    summary = runtime.sessions.record(follow_up, body)
    receipt = SessionReceipt(
        id=request_id,
        transcript_sha256=summary["transcript_sha256"],
        transcript_bytes=summary["transcript_bytes"],
        recorded_at=summary["recorded_at"],
    )
    return answer(receipt, 201)


# ------------------------------------------------------------------------- tokens


@bp.get("/.well-known/jwks.json")
def jwks():
    return answer(Jwks.model_validate(rt().signer.jwks()), headers={"Cache-Control": "public, max-age=300"})


@bp.get("/.well-known/jit-audit-keys.json")
def audit_keys():
    """Public keys that verify the audit trail's signatures (`jit audit verify --keys URL`)."""
    return answer(Jwks.model_validate(rt().audit.signer.jwks()), headers={"Cache-Control": "public, max-age=300"})


@bp.post("/v1/introspect")
def introspect():
    """RFC 7662: is this token one of ours, meant for the caller, and is its grant still active?"""
    runtime = rt()
    audiences = _introspection_audiences(bearer_token(request))
    if not audiences:
        raise Unauthorized()
    token = _read_form().get("token", "")
    if not token:
        return error(400, "invalid_request", "form field `token` is required")
    try:
        claims = runtime.signer.verify(token)
    except Exception:  # noqa: BLE001 - any invalid token is simply inactive
        return answer(Introspection.inactive())
    req = runtime.store.get(str(claims.get("jti", "")))
    if not _meant_for(claims, audiences):
        _checked(req, audiences, False, "not meant for this resource server")
        return answer(Introspection.inactive())  # what an unknown token gets: nothing to learn
    if req is None or req.status != Status.ACTIVE or req.expires_at is None or req.expires_at <= now():
        _checked(req, audiences, False)
        return answer(Introspection.inactive())
    _checked(req, audiences, True)
    return answer(Introspection.of(claims))


def _checked(req, audiences: set[str], active: bool, why: str | None = None) -> None:
    """A usage event of a token jit issued (counted, rate-limited into the audit trail); a failure
    to record it never changes the answer."""
    if req is None:
        return
    try:
        rt().usage.token_checked(req, audiences, active, why)
    except Exception as e:  # noqa: BLE001 - the resource server gets its answer regardless
        log.warning("could not record a token check of %s: %s", req.id, type(e).__name__)


def _introspection_audiences(bearer: str) -> set[str]:
    """The audiences a resource server holding `bearer` may ask about (JIT_INTROSPECTION_TOKENS);
    empty for anyone else. Pipeline tokens are not introspection credentials."""
    found = set()
    for audience, token in rt().settings.introspection_credentials():
        if secrets.compare_digest(token.encode(), bearer.encode()):
            found.add(audience)
    return found


def _meant_for(claims: dict[str, Any], audiences: set[str]) -> bool:
    aud = claims.get("aud")
    named = aud if isinstance(aud, list) else [aud]
    return "*" in audiences or any(isinstance(a, str) and a in audiences for a in named)


# ------------------------------------------------------------------------- the client


@cache
def client_file() -> tuple[bytes, str]:
    """The pipeline client's file as installed with this server, and its sha256 (read once:
    what a process serves matches the client it runs `jit request` with)."""
    spec = importlib.util.find_spec(CLIENT_MODULE)  # found, not imported: no client code runs here
    if spec is None or not spec.origin:
        raise RuntimeError(f"the {CLIENT_MODULE} module is not installed with the server")
    data = Path(spec.origin).read_bytes()
    return data, hashlib.sha256(data).hexdigest()


@bp.get("/v1/client.py")
def client_source():
    """The client as one stdlib-only file: `curl -fsS $JIT_URL/v1/client.py -o jit_client.py`."""
    data, sha256 = client_file()
    resp = Response(data, content_type=CLIENT_CONTENT_TYPE)
    resp.set_etag(sha256)
    resp.headers["Cache-Control"] = CLIENT_CACHE_CONTROL
    resp.headers["X-Content-Type-Options"] = "nosniff"
    return resp.make_conditional(request)


# ------------------------------------------------------------------------- health


@bp.get("/healthz")
def healthz():
    return answer(Ok(ok=True))


@bp.get("/readyz")
def readyz():
    try:
        rt().redis.ping()
    except Exception:  # noqa: BLE001
        return error(503, "redis_unavailable", "Redis is not reachable")
    return answer(Ok(ok=True))


@bp.get("/openapi.json")
def openapi():
    return jsonify(document(rt().settings.jit_public_url))
