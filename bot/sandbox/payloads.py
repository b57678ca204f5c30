"""What Slack sends to an app, built and signed as Slack does: interactions, slash commands, events."""

from __future__ import annotations

import json
import secrets
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from slack_sdk.signature import SignatureVerifier

from bot.sandbox.workspace import APP_ID, BOT_USER_ID, TEAM_DOMAIN, TEAM_ID, VERIFICATION_TOKEN, Person

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
#: Slack gives an app this long to answer a click, a command or a modal submission.
SLACK_ANSWER_S = 3.0
#: The sandbox waits longer (a busy laptop), and says when Slack would have given up.
SANDBOX_ANSWER_S = 15.0


@dataclass(frozen=True)
class Answer:
    """What jit answered: HTTP status, body, its content type and how long it took."""

    status: int
    body: bytes
    content_type: str
    seconds: float

    def json(self) -> dict[str, Any] | None:
        if not self.body.strip() or not self.content_type.startswith(JSON):
            return None
        try:
            data = json.loads(self.body)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None


class SignedSender:
    """POSTs to the app's request URL with `X-Slack-Signature` (v0 HMAC of the raw body)."""

    def __init__(self, url: str, signing_secret: str) -> None:
        self.url = url
        self._signer = SignatureVerifier(signing_secret)

    def headers(self, body: bytes, content_type: str, timestamp: int | None = None) -> dict[str, str]:
        ts = str(int(time.time()) if timestamp is None else timestamp)
        return {
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": self._signer.generate_signature(timestamp=ts, body=body) or "",
            "User-Agent": "Slackbot 1.0 (+https://api.slack.com/robots)",
        }

    def send(self, body: bytes, content_type: str) -> Answer:
        request = urllib.request.Request(self.url, data=body, headers=self.headers(body, content_type), method="POST")
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=SANDBOX_ANSWER_S) as resp:  # noqa: S310 - jit's own local URL
                return Answer(
                    resp.status, resp.read(), resp.headers.get("Content-Type", ""), time.monotonic() - started
                )
        except urllib.error.HTTPError as e:
            return Answer(e.code, e.read(), e.headers.get("Content-Type", ""), time.monotonic() - started)


def form_payload(payload: dict[str, Any]) -> bytes:
    """Interactions arrive as one form field, `payload`, holding the JSON."""
    return urlencode({"payload": json.dumps(payload, separators=(",", ":"))}).encode()


def action_ts() -> str:
    micros = int(time.time() * 1_000_000)
    return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"


def user_field(person: Person) -> dict[str, str]:
    return {"id": person.id, "username": person.name, "name": person.name, "team_id": TEAM_ID}


def button_action(block_id: str, element: dict[str, Any]) -> dict[str, Any]:
    """The `actions[0]` of a button click: what the button said, never what the page claims."""
    action: dict[str, Any] = {
        "action_id": element.get("action_id", ""),
        "block_id": block_id,
        "text": element.get("text") or {"type": "plain_text", "text": ""},
        "value": element.get("value", ""),
        "type": "button",
        "action_ts": action_ts(),
    }
    if element.get("style"):
        action["style"] = element["style"]
    return action


def block_actions(
    person: Person,
    action: dict[str, Any],
    trigger_id: str,
    *,
    message: dict[str, Any] | None = None,
    channel: tuple[str, str] | None = None,
    message_ts: str | None = None,
    response_url: str | None = None,
    view: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A `block_actions` payload for a click in a message (`channel`, `message_ts`; `message` is
    absent for an ephemeral one) or in a view (`view`: a modal or the Home tab)."""
    payload: dict[str, Any] = {
        "type": "block_actions",
        "user": user_field(person),
        "api_app_id": APP_ID,
        "token": VERIFICATION_TOKEN,
        "trigger_id": trigger_id,
        "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN},
        "enterprise": None,
        "is_enterprise_install": False,
    }
    if view is not None:
        payload["container"] = {"type": "view", "view_id": view["id"]}
        payload["view"] = view
        payload["state"] = {"values": {}}
    else:
        channel_id, channel_name = channel or ("", "")
        payload["container"] = {
            "type": "message",
            "message_ts": message_ts,
            "channel_id": channel_id,
            "is_ephemeral": message is None,
        }
        payload["channel"] = {"id": channel_id, "name": channel_name}
        if message is not None:
            payload["message"] = message
        payload["state"] = {"values": {}}
        payload["response_url"] = response_url
    payload["actions"] = [action]
    return payload


def view_submission(person: Person, view: dict[str, Any], values: dict[str, dict[str, str]], trigger_id: str) -> dict:
    """A modal's submission: `view.state.values` is `{block_id: {action_id: {type, value}}}`."""
    state = {
        block_id: {action_id: {"type": "plain_text_input", "value": text or None} for action_id, text in inputs.items()}
        for block_id, inputs in values.items()
    }
    return {
        "type": "view_submission",
        "team": {"id": TEAM_ID, "domain": TEAM_DOMAIN},
        "user": user_field(person),
        "api_app_id": APP_ID,
        "token": VERIFICATION_TOKEN,
        "trigger_id": trigger_id,
        "view": {**view, "state": {"values": state}},
        "response_urls": [],
        "is_enterprise_install": False,
        "enterprise": None,
    }


def slash_command(
    person: Person, command: str, text: str, channel: tuple[str, str], response_url: str, trigger_id: str
) -> bytes:
    """A slash command: a plain form, no `payload` field."""
    return urlencode(
        {
            "token": VERIFICATION_TOKEN,
            "team_id": TEAM_ID,
            "team_domain": TEAM_DOMAIN,
            "channel_id": channel[0],
            "channel_name": channel[1],
            "user_id": person.id,
            "user_name": person.name,
            "command": command,
            "text": text,
            "api_app_id": APP_ID,
            "is_enterprise_install": "false",
            "response_url": response_url,
            "trigger_id": trigger_id,
        }
    ).encode()


def app_home_opened(person: Person, dm_channel: str, view: dict[str, Any] | None) -> bytes:
    """The Events API callback Slack sends when someone opens the app's Home tab (JSON)."""
    event: dict[str, Any] = {
        "type": "app_home_opened",
        "user": person.id,
        "channel": dm_channel,
        "tab": "home",
        "event_ts": action_ts(),
    }
    if view is not None:
        event["view"] = view
    body = {
        "token": VERIFICATION_TOKEN,
        "team_id": TEAM_ID,
        "api_app_id": APP_ID,
        "event": event,
        "type": "event_callback",
        "event_id": f"Ev{secrets.token_hex(5).upper()}",
        "event_time": int(time.time()),
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": TEAM_ID,
                "user_id": BOT_USER_ID,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
        "event_context": f"4-{secrets.token_urlsafe(24)}",
    }
    return json.dumps(body).encode()
