"""What both platforms' webhook endpoints share: bounded bodies, JSON answers, replay refusal."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from flask import Response, current_app, jsonify

from bot.store.gates import GateStore
from bot.web import bounded_input

#: A webhook body larger than this is refused unread (413). GitHub's deployment_protection_rule
#: payloads are tens of KiB (a run in many pull requests carries them all).
MAX_BODY = 1024 * 1024
MAX_JSON_DEPTH = 64
#: Delivery ids are GUIDs.
DELIVERY_ID = re.compile(r"[A-Za-z0-9-]{8,64}")


def runtime() -> Any:
    return current_app.config["JIT_RUNTIME"]


def answer(status: int, code: str, message: str = "", /, **extra: Any) -> Response:
    resp = jsonify(
        {"result": code, "message": message, **extra} if status < 400 else {"error": code, "message": message}
    )
    resp.status_code = status
    return resp


class Refused(Exception):
    """Stop here and answer with this (4xx/5xx) response."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.response = answer(status, code, message)


def read_body() -> bytes:
    """The raw body (signatures are over the raw bytes), at most MAX_BODY of it."""
    try:
        return bounded_input.request_body(MAX_BODY)
    except bounded_input.TooSlow:
        refused = Refused(408, "too_slow", "the request body did not arrive in time")
        refused.response.headers["Connection"] = "close"  # cut off mid-body: not reusable
        raise refused from None
    except bounded_input.TooLarge:
        raise Refused(413, "too_large", f"the body is larger than {MAX_BODY} bytes") from None


def parse_json(raw: bytes) -> dict[str, Any]:
    try:
        data = bounded_input.loads(raw, MAX_JSON_DEPTH)
    except ValueError:
        raise Refused(400, "malformed_json", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise Refused(400, "malformed_json", "the body must be a JSON object")
    return data


def once(gates: GateStore, platform: str, delivery_id: str, handle: Callable[[], Response]) -> Response:
    """Handle a delivery the first time its id is seen (a replay: 409). When handling fails on our
    side (5xx, an exception) the id is forgotten again, so the platform's redelivery is handled."""
    if not gates.first_delivery(platform, delivery_id):
        return answer(409, "replayed", "this delivery was handled already")
    try:
        resp = handle()
    except Refused as e:
        resp = e.response
    except Exception:
        gates.forget_delivery(platform, delivery_id)
        raise
    if resp.status_code >= 500:
        gates.forget_delivery(platform, delivery_id)
    return resp
