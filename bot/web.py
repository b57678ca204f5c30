"""The Flask app that mounts the Slack endpoint and the pipeline hook; gunicorn's entry point."""

from __future__ import annotations

import json
import logging
from urllib.parse import parse_qs

from flask import Flask, Response, jsonify, request
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from slack_bolt.adapter.flask import SlackRequestHandler
from slack_sdk.signature import SignatureVerifier

from bot.domain import keys
from bot.runtime import Runtime, redis_from_url

log = logging.getLogger("jit.web")

MAX_SLACK_BODY = 512 * 1024


def create_app(rt: Runtime) -> Flask:
    from bot.hook.routes import bp
    from bot.hook.waiters import Waiters
    from bot.slack.app import build_app

    flask_app = Flask("jit")
    flask_app.config["JIT_RUNTIME"] = rt
    flask_app.config["JIT_WAITERS"] = Waiters(
        lambda: redis_from_url(rt.settings.redis_url, decode_responses=True, socket_timeout=None)
    )
    try:
        from bot.hook.oidc import OidcVerifier

        flask_app.config["JIT_OIDC"] = OidcVerifier()
    except ImportError:
        flask_app.config["JIT_OIDC"] = None
    flask_app.register_blueprint(bp)

    bolt = build_app(rt)
    handler = SlackRequestHandler(bolt)
    verifier = SignatureVerifier(rt.settings.slack_signing_secret.get_secret_value())

    @flask_app.post("/slack/events")
    def slack_events():
        raw = request.get_data(cache=True)
        if len(raw) > MAX_SLACK_BODY:
            return _slack_refusal(400, "request body too large")
        if not verifier.is_valid_request(raw, dict(request.headers)):
            return _slack_refusal(401, "invalid or stale Slack signature")
        refusal = _guard(rt, raw, request.headers)
        if refusal is not None:
            return refusal
        return handler.handle(request)

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


def _slack_refusal(status: int, message: str) -> Response:
    return Response(message, status=status, mimetype="text/plain")


def _guard(rt: Runtime, raw: bytes, headers) -> Response | None:
    """Checks Bolt does not make: replays, foreign workspaces, malformed payloads, stale buttons."""
    sig = headers.get("X-Slack-Signature", "")
    if not rt.redis.set(keys.replay(sig), "1", nx=True, ex=600):
        return _slack_refusal(401, "replayed request")
    ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
    payload: dict = {}
    if ctype == "application/x-www-form-urlencoded":
        form = parse_qs(raw.decode("utf-8", errors="replace"))
        if "payload" in form:
            try:
                payload = json.loads(form["payload"][0])
            except ValueError:
                return _slack_refusal(400, "malformed payload")
            if not isinstance(payload, dict):
                return _slack_refusal(400, "malformed payload")
        else:
            payload = {k: v[0] for k, v in form.items()}
    elif ctype == "application/json":
        try:
            payload = json.loads(raw)
        except ValueError:
            return _slack_refusal(400, "malformed JSON")
        if not isinstance(payload, dict):
            return _slack_refusal(400, "malformed JSON")
    else:
        return _slack_refusal(400, "unsupported content type")

    team = _team_of(payload)
    expected = rt.settings.slack_team_id or rt.redis.get(keys.slack_team())
    user = (payload.get("user") or {}).get("id") if isinstance(payload.get("user"), dict) else payload.get("user_id")
    if expected and team and team != expected:
        rt.audit.append(
            "slack.refused", actor=user, outcome="refused", details={"why": "other workspace", "team": team}
        )
        return _slack_refusal(401, "this workspace may not use jit")
    if payload.get("type") == "block_actions":
        return _check_buttons(rt, payload, user)
    return None


def _team_of(payload: dict) -> str | None:
    team = payload.get("team")
    if isinstance(team, dict) and team.get("id"):
        return team["id"]
    if isinstance(payload.get("user"), dict) and payload["user"].get("team_id"):
        return payload["user"]["team_id"]
    return payload.get("team_id")


def _check_buttons(rt: Runtime, payload: dict, user: str | None) -> Response | None:
    """A button's value is a lookup key: it must name the request whose message holds it."""
    from bot.slack.blocks import APPROVE, DENY, REVOKE

    container = payload.get("container") or {}
    for act in payload.get("actions") or []:
        if not isinstance(act, dict) or act.get("action_id") not in (APPROVE, DENY, REVOKE):
            continue
        rid = str(act.get("value") or "")
        if container.get("type") != "message":
            continue  # App Home and modals: the request id is checked against the store only
        req = rt.store.get(rid)
        if req is None:
            continue  # the listener answers "no such request"
        if req.message_ts and container.get("message_ts") != req.message_ts:
            rt.audit.append(
                "slack.refused", request_id=rid, action=req.action, actor=user, outcome="refused",
                details={"why": "button value names a request that is not this message's"},
            )
            return _slack_refusal(400, "this button does not belong to that request")
    return None
