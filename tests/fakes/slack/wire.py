"""Shared by both directions of the fake: workspace identities, content types, HTTP replies."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Identities shared by the fake server and the payload builders so that they agree.
TEAM_ID = "T0TEAM"
TEAM_DOMAIN = "jit-test"
APP_ID = "A0JITAPP"
BOT_USER_ID = "U0JITBOT"
BOT_ID = "B0JITBOT"
VERIFICATION_TOKEN = "deprecated-verification-token"  # Slack still sends `token`; never trust it.

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"

Body = tuple[bytes, str]  # (body bytes, Content-Type)


@dataclass
class Reply:
    """What one of the fake's HTTP endpoints answers."""

    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


def error_body(error: str, **extra: Any) -> dict[str, Any]:
    """A Web API error answer: ``{"ok": false, "error": error, ...}``."""
    return {"ok": False, "error": error, **extra}


def bearer_token(headers: Mapping[str, str]) -> str | None:
    auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return None


def truthy(v: Any) -> bool:
    """Slack's booleans as they arrive in form fields or JSON."""
    return v is True or (isinstance(v, str) and v.lower() in ("true", "1"))
