"""The one Flask app of `jit serve`: the pipeline hook, Slack's endpoint and /metrics; gunicorn's entry point."""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
import secrets

from flask import Flask, Response, g, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bot import logs
from bot.decision.slack import http as slack_http
from bot.decision.slack.app import build_app
from bot.request.gates import github as github_gate
from bot.request.gates import gitlab as gitlab_gate
from bot.request.http import routes
from bot.request.http.admission import Admission
from bot.request.http.limits import MAX_SESSION_BODY
from bot.request.http.longpoll import Waiters
from bot.request.http.oidc import OidcVerifier
from bot.runtime import Runtime
from bot.store import metrics
from bot.store.connection import redis_from_url
from bot.store.ratelimit import LongPollLeases
from bot.web import bounded_input

log = logging.getLogger("jit.web")

#: No endpoint reads a body larger than this (each has its own, smaller cap).
MAX_ANY_BODY = max(1024 * 1024, MAX_SESSION_BODY)


def create_app(rt: Runtime) -> Flask:
    flask_app = Flask("jit")
    # `//` in a path is a 404 (JSON), not an HTML redirect: set before any route is added
    flask_app.url_map.merge_slashes = False
    # A backstop for every body Flask reads itself (the introspection form): a declared length
    # over it is refused unread, a chunked body is cut there (413). Above every cap of our own.
    flask_app.config["MAX_CONTENT_LENGTH"] = MAX_ANY_BODY
    flask_app.config["JIT_RUNTIME"] = rt
    flask_app.config[bounded_input.DEADLINE_CONFIG] = rt.settings.jit_http_body_timeout_s
    flask_app.config["JIT_WAITERS"] = Waiters(
        lambda: redis_from_url(rt.settings.redis_url, decode_responses=True, socket_timeout=None)
    )
    flask_app.config["JIT_LONG_POLLS"] = LongPollLeases(rt.redis, rt.settings.jit_max_long_polls_per_pipeline)
    flask_app.config["JIT_OIDC"] = OidcVerifier()
    flask_app.config["JIT_ADMISSION"] = Admission(
        rt.settings.jit_hook_max_in_flight, rt.settings.jit_hook_latency_budget_ms
    )
    flask_app.register_blueprint(routes.bp)
    flask_app.register_blueprint(github_gate.bp)  # POST /github/webhook (docs/gates.md)
    flask_app.register_blueprint(gitlab_gate.bp)  # POST /gitlab/webhook
    flask_app.register_blueprint(
        slack_http.blueprint(build_app(rt), rt.settings.slack_signing_secret.get_secret_value())
    )
    _mount_operations(flask_app, rt)

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


#: Headers a reverse proxy adds: a request carrying one came from elsewhere, whatever its socket says.
_FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


def _metrics_refusal(token: str | None) -> Response | None:
    """Who may read /metrics: with JIT_METRICS_TOKEN, whoever presents it as a bearer token; without
    it, only a client on this host talking to the server directly (not through a proxy)."""
    if token is not None:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return None
        resp = jsonify({"error": "unauthorized", "message": "/metrics needs Authorization: Bearer <JIT_METRICS_TOKEN>"})
        resp.status_code = 401
        resp.headers["WWW-Authenticate"] = 'Bearer realm="jit-metrics"'
        return resp
    if _is_loopback(request.remote_addr) and not any(h in request.headers for h in _FORWARDING_HEADERS):
        return None
    resp = jsonify(
        {"error": "forbidden", "message": "/metrics answers local clients only; set JIT_METRICS_TOKEN to scrape it"}
    )
    resp.status_code = 403
    return resp


def _is_loopback(addr: str | None) -> bool:
    try:
        ip = ipaddress.ip_address(addr or "")
    except ValueError:  # a Unix socket, or no address at all
        return False
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return (mapped or ip).is_loopback


def _mount_operations(app: Flask, rt: Runtime) -> None:
    """`/metrics`, the Slack client's error counts, and the ids every log line of a request carries."""
    metrics.instrument_slack(rt.slack, rt.redis)
    registry = metrics.registry_for(rt.redis, rt.queue_depths)

    token = rt.settings.jit_metrics_token

    @app.get("/metrics")
    def prometheus_metrics():
        refused = _metrics_refusal(token.get_secret_value() if token else None)
        if refused is not None:
            return refused
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
