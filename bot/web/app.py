"""The Flask app that mounts the Slack endpoint and the pipeline hook; gunicorn's entry point."""

from __future__ import annotations

import logging
from urllib.parse import parse_qsl

from flask import Flask, Response, jsonify, request
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from slack_bolt.adapter.flask.handler import to_flask_response
from slack_bolt.request import BoltRequest
from slack_sdk import WebClient
from slack_sdk.signature import SignatureVerifier
from werkzeug.exceptions import RequestEntityTooLarge

from bot.web import bounded_input
from bot.store import keys
from bot.store.refusals import record_refusal
from bot.store.ratelimit import LongPollLeases
from bot.wiring import Runtime, redis_from_url

log = logging.getLogger("jit.web")

MAX_SLACK_BODY = 512 * 1024
#: No endpoint reads a body larger than this (each has its own, smaller cap).
MAX_ANY_BODY = 1024 * 1024
#: Deeper than any payload Slack sends (Block Kit and rich-text lists nest, but nowhere near this).
MAX_SLACK_JSON_DEPTH = 64


def create_app(rt: Runtime) -> Flask:
    from bot.request.http.routes import bp
    from bot.request.http.longpoll import Waiters
    from bot.decision.slack.app import build_app

    flask_app = Flask("jit")
    # `//` in a path is a 404 (JSON), not an HTML redirect: set before any route is added
    flask_app.url_map.merge_slashes = False
    # A backstop for every body Flask reads itself (the introspection form): a declared length
    # over it is refused unread, a chunked body is cut there (413). Above every cap of our own.
    flask_app.config["MAX_CONTENT_LENGTH"] = MAX_ANY_BODY
    flask_app.config["JIT_RUNTIME"] = rt
    flask_app.config["JIT_WAITERS"] = Waiters(
        lambda: redis_from_url(rt.settings.redis_url, decode_responses=True, socket_timeout=None)
    )
    flask_app.config["JIT_LONG_POLLS"] = LongPollLeases(rt.redis, rt.settings.jit_max_long_polls_per_pipeline)
    try:
        from bot.request.http.oidc import OidcVerifier

        flask_app.config["JIT_OIDC"] = OidcVerifier()
    except ImportError:
        flask_app.config["JIT_OIDC"] = None
    flask_app.register_blueprint(bp)
    _mount_operations(flask_app, rt)

    bolt = build_app(rt)
    verifier = SignatureVerifier(rt.settings.slack_signing_secret.get_secret_value())

    @flask_app.post("/slack/events")
    def slack_events():
        # Nothing is verified yet: refuse an oversize body on its Content-Length, and never hold
        # more than the cap of one sent without (chunked).
        try:
            raw = bounded_input.read_body(request.stream, request.content_length, MAX_SLACK_BODY)
        except (bounded_input.TooLarge, RequestEntityTooLarge):  # the latter: over MAX_ANY_BODY
            return _slack_refusal(400, "request body too large")
        if not verifier.is_valid_request(raw, dict(request.headers)):
            return _slack_refusal(401, "invalid or stale Slack signature")
        refusal = _guard(rt, raw, request.headers)
        if refusal is not None:
            return refusal
        try:
            bolt_request = _form_safe(
                BoltRequest(
                    body=raw.decode("utf-8", errors="replace"),
                    query=request.query_string.decode("utf-8"),
                    headers=request.headers,  # type: ignore[arg-type]
                )
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            # Bolt reads ids out of the payload while building its context and assumes
            # Slack's shapes (e.g. `user` an object): anything else is a malformed payload.
            return _slack_refusal(400, "malformed payload")
        return to_flask_response(bolt.dispatch(bolt_request))

    @flask_app.errorhandler(RedisConnectionError)
    @flask_app.errorhandler(RedisTimeoutError)
    def _redis_down(e):
        resp = jsonify({"error": "unavailable", "message": "storage is unavailable; retry shortly"})
        resp.status_code = 503
        resp.headers["Retry-After"] = "2"
        return resp

    @flask_app.errorhandler(404)
    def _not_found(e):
        return jsonify({"error": "not_found", "message": "no such endpoint"}), 404

    @flask_app.errorhandler(405)
    def _method(e):
        return jsonify({"error": "method_not_allowed", "message": "method not allowed"}), 405

    @flask_app.errorhandler(413)
    def _too_large(e):
        return jsonify({"error": "too_large", "message": "the body is too large"}), 413

    return flask_app


def slack_body(raw: str, content_type: str | None) -> dict:
    """The body as Bolt's parser reads it (JSON when declared so or when it starts with `{`; else a
    form whose `payload` field, when present, is the JSON), with two differences: JSON nested
    deeper than MAX_SLACK_JSON_DEPTH is refused (ValueError) before it is parsed, and a form that
    merely *mentions* "payload" (a slash command's text, a channel named payload-team) is read as
    the form it is, where Bolt would read it as an empty interaction and drop every field."""
    if not raw:
        return {}
    if (content_type or "").strip().lower() == "application/json" or raw.startswith("{"):
        return bounded_input.loads(raw, MAX_SLACK_JSON_DEPTH)
    form = dict(parse_qsl(raw, keep_blank_values=True))
    if "payload" in form:
        return bounded_input.loads(form["payload"], MAX_SLACK_JSON_DEPTH)
    return form


def _form_safe(bolt_request):
    """Give Bolt the body `slack_body` reads, so our checks and the listeners see the same thing.
    (Only a form that mentions "payload" without being an interaction needs it.)"""
    from slack_bolt.context import BoltContext
    from slack_bolt.request.internals import build_context

    if bolt_request.body == {} and "payload" in bolt_request.raw_body:
        body = slack_body(bolt_request.raw_body, bolt_request.content_type)
        if body:
            bolt_request.body = body
            bolt_request.context = build_context(BoltContext({}), body)
    return bolt_request


def _slack_refusal(status: int, message: str) -> Response:
    return Response(message, status=status, mimetype="text/plain")


def _guard(rt: Runtime, raw: bytes, headers) -> Response | None:
    """Checks Bolt does not make: replays, foreign workspaces, malformed payloads, stale buttons."""
    ctype = (headers.get("Content-Type") or "").split(";")[0]
    if ctype.strip().lower() not in ("application/x-www-form-urlencoded", "application/json"):
        return _slack_refusal(400, "unsupported content type")
    try:
        # Bolt's own parser, so these checks see exactly the payload the listeners will get
        # (Bolt takes the last of repeated fields and reads any body starting with `{` as JSON).
        payload = slack_body(raw.decode("utf-8", errors="replace"), ctype)
    except ValueError:
        return _slack_refusal(400, "malformed payload")
    if not isinstance(payload, dict) or not _slack_shaped(payload):
        return _slack_refusal(400, "malformed payload")

    refusal = payload_refusal(rt, payload, seen_key=keys.replay(headers.get("X-Slack-Signature", "")))
    return _slack_refusal(*refusal) if refusal else None


#: How long the serving process waits for `auth.test` when it must learn its workspace.
AUTH_TEST_TIMEOUT_S = 2.0
#: How long a request (signature) or envelope id is remembered: twice Slack's retry window.
SEEN_FOR_S = 600


def payload_refusal(rt: Runtime, payload: dict, *, seen_key: str) -> tuple[int, str] | None:
    """The checks both Slack transports share (HTTP above, Socket Mode in bot/decision/slack/socket_mode.py):
    malformed shapes, an unknown home workspace, replays, foreign workspaces, buttons naming another
    message's request. `seen_key` remembers this request (its signature, or its envelope id) so that
    a replay is refused. Returns (HTTP status, why) for a refusal, else None."""
    if not _slack_shaped(payload):
        return 400, "malformed payload"
    if _names_no_workspace(payload):
        return None  # Bolt answers these itself and runs no listener
    expected = home_team(rt)
    if expected is None:
        # Fail closed, but not for good: Slack retries, and nothing is marked seen yet.
        return 503, "jit cannot tell its Slack workspace yet (auth.test failed); retry shortly"
    raw_user = payload.get("user")
    user = _text(raw_user.get("id") if isinstance(raw_user, dict) else payload.get("user_id"))
    if not rt.redis.set(seen_key, "1", nx=True, ex=SEEN_FOR_S):
        # the request is genuine (signed, or on our socket), so Slack vouches for the user: a trace
        record_refusal(rt.redis, rt.audit, "slack.refused", actor=user, details={"why": "replayed request"})
        return 401, "replayed request"
    team = _text(_team_of(payload))
    if team != expected:
        why = {"why": "other workspace", "team": team} if team else {"why": "no workspace"}
        record_refusal(rt.redis, rt.audit, "slack.refused", actor=user, details=why)
        return 401, "this workspace may not use jit"
    if payload.get("type") == "block_actions":
        return _check_buttons(rt, payload, user)
    return None


def _names_no_workspace(payload: dict) -> bool:
    """Slack's URL check and SSL check carry no workspace; Bolt's middleware answers both before
    any listener (the challenge echoed, an empty 200)."""
    return payload.get("type") == "url_verification" or payload.get("ssl_check") == "1"


def home_team(rt: Runtime) -> str | None:
    """The workspace jit serves: SLACK_TEAM_ID, else the team of the bot token as `auth.test` said
    (kept in Redis by whichever process asked first, a worker or a server), else asked now.
    None when Slack cannot say: the caller then refuses, as a foreign workspace cannot be told apart."""
    known = rt.settings.slack_team_id or rt.redis.get(keys.slack_team())
    if known:
        return known
    client = WebClient(
        token=rt.settings.slack_bot_token.get_secret_value(),
        base_url=rt.settings.slack_api_url,
        timeout=AUTH_TEST_TIMEOUT_S,
        retry_handlers=[],  # Slack waits 3 s for our answer: one short try, it will retry
    )
    try:
        team = client.auth_test().get("team_id")
    except Exception as e:  # noqa: BLE001 - Slack down, token refused: the workspace stays unknown
        log.warning("auth.test failed (%s): Slack traffic is refused until the workspace is known", type(e).__name__)
        return None
    if not isinstance(team, str) or not team:
        return None
    rt.redis.set(keys.slack_team(), team)
    return team


# Fields Slack always sends as objects; Bolt's routing and logging call `.get` on them.
_OBJECT_FIELDS = ("user", "view", "container", "channel", "message", "event", "state")


def _slack_shaped(payload: dict) -> bool:
    if any(k in payload and not isinstance(payload[k], dict) for k in _OBJECT_FIELDS):
        return False
    if not isinstance(payload.get("team"), dict | None):
        return False
    actions = payload.get("actions", [])
    if payload.get("type") == "block_actions" and not actions:
        return False  # Bolt reads actions[0] of every block_actions payload
    if payload.get("type") in ("block_actions", "view_submission"):
        user = payload.get("user")
        if not isinstance(user, dict) or not isinstance(user.get("id"), str):
            return False  # every click and submission names its user
        if any(not isinstance(a.get("value", ""), str) for a in actions if isinstance(a, dict)):
            return False  # button values are strings
    # Bolt's matchers index `action_id` (and `block_id`) directly: a button without one is malformed
    return isinstance(actions, list) and all(
        isinstance(a, dict) and isinstance(a.get("action_id"), str) for a in actions
    )


def _text(value: object) -> str | None:
    """A field Slack sends as a string; anything else (a hostile payload) counts as absent."""
    return value if isinstance(value, str) and value else None


def _team_of(payload: dict) -> object:
    team = payload.get("team")
    if isinstance(team, dict) and team.get("id"):
        return team["id"]
    if isinstance(payload.get("user"), dict) and payload["user"].get("team_id"):
        return payload["user"]["team_id"]
    return payload.get("team_id")


def _check_buttons(rt: Runtime, payload: dict, user: str | None) -> tuple[int, str] | None:
    """A button's value is a lookup key: it must name the request whose message holds it."""
    from bot.decision.slack.views.blocks import APPROVE, BREAK_GLASS, DENY, REVOKE

    container = payload.get("container") or {}
    for act in payload.get("actions") or []:
        if not isinstance(act, dict) or act.get("action_id") not in (APPROVE, DENY, REVOKE, BREAK_GLASS):
            continue
        rid = str(act.get("value") or "")
        if container.get("type") != "message":
            continue  # App Home and modals: the request id is checked against the store only
        req = rt.store.get(rid)
        if req is None:
            continue  # the listener answers "no such request"
        # no message of ours holds this request yet, or another message does
        if container.get("message_ts") != req.message_ts:
            record_refusal(
                rt.redis, rt.audit, "slack.refused", request_id=rid, action=req.action, actor=user,
                details={"why": "button value names a request that is not this message's"},
            )
            return 400, "this button does not belong to that request"
    return None


def _mount_operations(app: Flask, rt: Runtime) -> None:
    """`/metrics`, the Slack client's error counts, and the ids every log line of a request carries."""
    import re
    import secrets

    from flask import g
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from bot import logs

    from bot.store import metrics

    metrics.instrument_slack(rt.slack, rt.redis)
    registry = metrics.registry_for(rt.redis, rt.raw_redis)

    @app.get("/metrics")
    def prometheus_metrics():
        return Response(generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    @app.before_request
    def _log_context():
        given = request.headers.get("X-Request-Id", "")
        http_id = given if re.fullmatch(r"[A-Za-z0-9._-]{1,64}", given) else secrets.token_hex(8)
        g.jit_http_request_id = http_id
        g.jit_log_token = logs.push(request_id=(request.view_args or {}).get("request_id"), http_request_id=http_id)

    @app.after_request
    def _echo_request_id(resp: Response) -> Response:
        resp.headers["X-Request-Id"] = g.get("jit_http_request_id", "")
        return resp

    @app.teardown_request
    def _log_context_end(exc: BaseException | None) -> None:
        token = g.pop("jit_log_token", None)
        if token is not None:
            try:
                logs.pop(token)
            except ValueError:  # reset from another context: nothing left to undo here
                pass
