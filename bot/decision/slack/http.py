"""`POST /slack/events`: Slack's requests over HTTP, read within bounds and handed to Bolt.

Nothing is verified yet when a body arrives, so it is refused on its Content-Length, read to a
hard cap (chunked bodies too), its signature checked before a byte of it is parsed (an unsigned
body is a 401 whatever it contains), and parsed with a nesting limit before Bolt sees it. Bolt
verifies the signature again; jit's own checks are Bolt middleware
(bot/decision/slack/middleware.py), shared with Socket Mode.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from flask import Blueprint, Response, request
from slack_bolt import App
from slack_bolt.adapter.flask.handler import to_flask_response
from slack_bolt.context import BoltContext
from slack_bolt.request import BoltRequest
from slack_bolt.request.internals import build_context
from slack_sdk.signature import SignatureVerifier
from werkzeug.exceptions import RequestEntityTooLarge

from bot.web import bounded_input

MAX_SLACK_BODY = 512 * 1024
#: Deeper than any payload Slack sends (Block Kit and rich-text lists nest, but nowhere near this).
MAX_SLACK_JSON_DEPTH = 64


def blueprint(bolt: App, signing_secret: str) -> Blueprint:
    bp = Blueprint("slack", __name__)
    verifier = SignatureVerifier(signing_secret)

    @bp.post("/slack/events")
    def slack_events():
        try:
            raw = bounded_input.request_body(MAX_SLACK_BODY)
        except (bounded_input.TooLarge, RequestEntityTooLarge):  # the latter: over Flask's own cap
            return refusal(400, "request body too large")
        except bounded_input.TooSlow:
            resp = refusal(408, "request body too slow")
            resp.headers["Connection"] = "close"  # cut off mid-body: not reusable
            return resp
        if not verifier.is_valid_request(raw, dict(request.headers)):
            return refusal(401, "invalid or stale Slack signature")
        ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype not in ("application/x-www-form-urlencoded", "application/json"):
            return refusal(400, "unsupported content type")
        text = raw.decode("utf-8", errors="replace")
        try:
            slack_body(text, ctype)  # nesting bounded before Bolt's parser (which has no limit) runs
            bolt_request = _form_safe(
                BoltRequest(body=text, query=request.query_string.decode("utf-8"), headers=request.headers)  # type: ignore[arg-type]
            )
        except (AttributeError, KeyError, TypeError, ValueError):
            # Bolt reads ids out of the payload while building its context and assumes
            # Slack's shapes (e.g. `user` an object): anything else is a malformed payload.
            return refusal(400, "malformed payload")
        return to_flask_response(bolt.dispatch(bolt_request))

    return bp


def refusal(status: int, message: str) -> Response:
    return Response(message, status=status, mimetype="text/plain")


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


def _form_safe(bolt_request: BoltRequest) -> BoltRequest:
    """Give Bolt the body `slack_body` reads, so our checks and the listeners see the same thing.
    (Only a form that mentions "payload" without being an interaction needs it.)"""
    if bolt_request.body == {} and "payload" in bolt_request.raw_body:
        body = slack_body(bolt_request.raw_body, bolt_request.content_type)
        if body:
            bolt_request.body = body
            bolt_request.context = build_context(BoltContext({}), body)
    return bolt_request
