"""What Slack POSTs to the bot: slash commands, interactions, events, and their signatures."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from .wire import (
    APP_ID,
    BOT_ID,
    BOT_USER_ID,
    FORM,
    JSON,
    TEAM_DOMAIN,
    TEAM_ID,
    VERIFICATION_TOKEN,
    Body,
)


def sign(
    secret: str | bytes,
    body: bytes | str,
    timestamp: int | None = None,
    *,
    content_type: str = FORM,
) -> dict[str, str]:
    """Headers Slack sends with a request: ``X-Slack-Request-Timestamp``,
    ``X-Slack-Signature`` (``v0=`` + hex HMAC-SHA256 of ``v0:{ts}:{body}``), ``Content-Type``.
    ``timestamp`` defaults to now; pass an old one to test replay rejection."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    key = secret.encode() if isinstance(secret, str) else secret
    raw = body.encode() if isinstance(body, str) else body
    digest = hmac.new(key, b"v0:" + str(ts).encode() + b":" + raw, hashlib.sha256).hexdigest()
    return {
        "Content-Type": content_type,
        "X-Slack-Request-Timestamp": str(ts),
        "X-Slack-Signature": f"v0={digest}",
    }


def signed(secret: str | bytes, built: Body, timestamp: int | None = None) -> tuple[bytes, dict[str, str]]:
    """``signed(SECRET, slash_command(...))`` -> ``(body, headers)`` ready to POST."""
    body, ctype = built
    return body, sign(secret, body, timestamp, content_type=ctype)


def _trigger_id() -> str:
    return f"{secrets.randbelow(10**11)}.{secrets.randbelow(10**11)}.{secrets.token_hex(16)}"


def _action_ts() -> str:
    micros = int(time.time() * 1_000_000)
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


def _user(user_id: str, team_id: str, user_name: str | None) -> dict[str, str]:
    name = user_name or user_id.lower()
    return {"id": user_id, "username": name, "name": name, "team_id": team_id}


def _payload_form(payload: dict[str, Any]) -> Body:
    return urlencode({"payload": json.dumps(payload, separators=(",", ":"))}).encode(), FORM


def slash_command(
    text: str,
    user_id: str,
    team_id: str = TEAM_ID,
    channel_id: str = "C0JITCHAN",
    command: str = "/jit",
    response_url: str | None = None,
    trigger_id: str | None = None,
    *,
    channel_name: str = "jit-requests",
    user_name: str | None = None,
    team_domain: str = TEAM_DOMAIN,
    api_app_id: str = APP_ID,
    enterprise_id: str | None = None,
) -> Body:
    """A slash command exactly as Slack POSTs it: a plain urlencoded form."""
    fields: dict[str, str] = {
        "token": VERIFICATION_TOKEN,
        "team_id": team_id,
        "team_domain": team_domain,
    }
    if enterprise_id:
        fields.update(enterprise_id=enterprise_id, enterprise_name="Jit Enterprise")
    fields.update(
        {
            "channel_id": channel_id,
            "channel_name": channel_name,
            "user_id": user_id,
            "user_name": user_name or user_id.lower(),
            "command": command,
            "text": text,
            "api_app_id": api_app_id,
            "is_enterprise_install": "false",
            "response_url": response_url
            or f"https://hooks.slack.com/commands/{team_id}/{secrets.randbelow(10**12)}/{secrets.token_hex(12)}",
            "trigger_id": trigger_id or _trigger_id(),
        }
    )
    return urlencode(fields).encode(), FORM


def block_action(
    action_id: str,
    value: str,
    user_id: str,
    team_id: str = TEAM_ID,
    channel: str = "C0JITCHAN",
    message_ts: str | None = None,
    block_id: str = "actions",
    response_url: str | None = None,
    trigger_id: str | None = None,
    *,
    message: Mapping[str, Any] | None = None,
    button_text: str = "Approve",
    style: str | None = None,
    is_ephemeral: bool = False,
    view: Mapping[str, Any] | None = None,
    user_name: str | None = None,
    channel_name: str = "jit-requests",
    api_app_id: str = APP_ID,
) -> Body:
    """A ``block_actions`` payload for a button click, as form ``payload=<json>``.

    By default the button sits in a bot message in ``channel``; pass ``message``
    (e.g. ``fake.message(ts)``) to embed the real message, or ``view`` (a view
    object, e.g. ``fake.home(user)``) for a click in the App Home / a modal.
    """
    action: dict[str, Any] = {
        "action_id": action_id,
        "block_id": block_id,
        "text": {"type": "plain_text", "text": button_text, "emoji": True},
        "value": value,
        "type": "button",
        "action_ts": _action_ts(),
    }
    if style:
        action["style"] = style
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": _user(user_id, team_id, user_name),
        "api_app_id": api_app_id,
        "token": VERIFICATION_TOKEN,
    }
    if view is not None:
        payload["container"] = {"type": "view", "view_id": view.get("id", "V0000000001")}
        payload["trigger_id"] = trigger_id or _trigger_id()
        payload["team"] = {"id": team_id, "domain": TEAM_DOMAIN}
        payload["enterprise"] = None
        payload["is_enterprise_install"] = False
        payload["view"] = dict(view)
        payload["state"] = {"values": {}}
        payload["actions"] = [action]
        return _payload_form(payload)

    ts = message_ts or (message or {}).get("ts") or _action_ts()
    if message is not None:
        # Accept a fake.message(ts) record or a Slack message object; keep Slack's fields only.
        msg = {
            k: copy.deepcopy(v)
            for k, v in message.items()
            if v is not None and k not in ("channel", "edited", "edited_ts")
        }
        msg.setdefault("type", "message")
        msg["ts"] = ts
    else:
        msg = {
            "type": "message",
            "user": BOT_USER_ID,
            "bot_id": BOT_ID,
            "app_id": api_app_id,
            "team": team_id,
            "text": "This content can't be displayed.",
            "ts": ts,
            "blocks": [
                {
                    "type": "actions",
                    "block_id": block_id,
                    "elements": [
                        {
                            "type": "button",
                            "action_id": action_id,
                            "text": {"type": "plain_text", "text": button_text, "emoji": True},
                            "value": value,
                        }
                    ],
                }
            ],
        }
    payload.update(
        {
            "container": {
                "type": "message",
                "message_ts": ts,
                "channel_id": channel,
                "is_ephemeral": is_ephemeral,
            },
            "trigger_id": trigger_id or _trigger_id(),
            "team": {"id": team_id, "domain": TEAM_DOMAIN},
            "enterprise": None,
            "is_enterprise_install": False,
            "channel": {"id": channel, "name": channel_name},
            "message": msg,
            "state": {"values": {}},
            "response_url": response_url
            or f"https://hooks.slack.com/actions/{team_id}/{secrets.randbelow(10**12)}/{secrets.token_hex(12)}",
            "actions": [action],
        }
    )
    if is_ephemeral:
        payload.pop("message")  # Slack omits the message for clicks in ephemeral messages
    return _payload_form(payload)


def _state_values(values: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for block_id, actions in values.items():
        if not isinstance(actions, Mapping):  # {block_id: "text"} shorthand: action_id == block_id
            actions = {block_id: actions}
        out[block_id] = {}
        for action_id, v in actions.items():
            if isinstance(v, Mapping):
                out[block_id][action_id] = dict(v)
            else:
                out[block_id][action_id] = {"type": "plain_text_input", "value": v}
    return out


def view_submission(
    callback_id: str,
    private_metadata: str,
    values: Mapping[str, Any],
    user_id: str,
    team_id: str = TEAM_ID,
    *,
    view_id: str = "V0JITMODAL",
    blocks: list[dict[str, Any]] | None = None,
    title: str = "Request access",
    user_name: str | None = None,
    api_app_id: str = APP_ID,
    trigger_id: str | None = None,
) -> Body:
    """A ``view_submission`` payload as form ``payload=<json>``.

    ``values``: ``{block_id: {action_id: "text"}}`` (becomes ``plain_text_input``),
    ``{block_id: {action_id: {"type": ..., ...}}}`` (verbatim), or ``{block_id: "text"}``.
    """
    payload = {
        "type": "view_submission",
        "team": {"id": team_id, "domain": TEAM_DOMAIN},
        "user": _user(user_id, team_id, user_name),
        "api_app_id": api_app_id,
        "token": VERIFICATION_TOKEN,
        "trigger_id": trigger_id or _trigger_id(),
        "view": {
            "id": view_id,
            "team_id": team_id,
            "type": "modal",
            "blocks": blocks or [],
            "private_metadata": private_metadata,
            "callback_id": callback_id,
            "state": {"values": _state_values(values)},
            "hash": f"{int(time.time())}.{secrets.token_hex(4)}",
            "title": {"type": "plain_text", "text": title, "emoji": True},
            "clear_on_close": False,
            "notify_on_close": False,
            "close": {"type": "plain_text", "text": "Cancel", "emoji": True},
            "submit": {"type": "plain_text", "text": "Submit", "emoji": True},
            "previous_view_id": None,
            "root_view_id": view_id,
            "app_id": api_app_id,
            "external_id": "",
            "app_installed_team_id": team_id,
            "bot_id": BOT_ID,
        },
        "response_urls": [],
        "is_enterprise_install": False,
        "enterprise": None,
    }
    return _payload_form(payload)


def event_callback(
    event: Mapping[str, Any],
    team_id: str = TEAM_ID,
    *,
    event_id: str | None = None,
    event_time: int | None = None,
    api_app_id: str = APP_ID,
    bot_user_id: str = BOT_USER_ID,
) -> Body:
    """An Events API ``event_callback`` envelope (JSON body)."""
    body = {
        "token": VERIFICATION_TOKEN,
        "team_id": team_id,
        "api_app_id": api_app_id,
        "event": dict(event),
        "type": "event_callback",
        "event_id": event_id or f"Ev{secrets.token_hex(5).upper()}",
        "event_time": int(time.time()) if event_time is None else event_time,
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": team_id,
                "user_id": bot_user_id,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
        "event_context": f"4-{secrets.token_urlsafe(24)}",
    }
    return json.dumps(body).encode(), JSON


def url_verification(challenge: str) -> Body:
    """The Events API handshake Slack sends when the request URL is configured."""
    body = {"token": VERIFICATION_TOKEN, "challenge": challenge, "type": "url_verification"}
    return json.dumps(body).encode(), JSON


def app_home_opened(
    user_id: str,
    team_id: str = TEAM_ID,
    *,
    channel: str = "D0JITHOME",
    tab: str = "home",
    view: Mapping[str, Any] | None = None,
) -> Body:
    """``app_home_opened`` event_callback; ``view`` is the currently published Home view, if any."""
    event: dict[str, Any] = {
        "type": "app_home_opened",
        "user": user_id,
        "channel": channel,
        "tab": tab,
        "event_ts": _action_ts(),
    }
    if view is not None:
        event["view"] = dict(view)
    return event_callback(event, team_id)
