"""Bolt middleware: the checks Bolt does not make, for HTTP and Socket Mode alike.

Bolt has already verified the signature (HTTP; a Socket Mode socket is authenticated by the
app-level token). Here, before any listener is matched: payloads Bolt's matchers would choke on
(400), an unknown home workspace (503: Slack retries; nothing is marked seen), replays (401: the
same signature, or the same envelope, twice), other workspaces (401), and buttons whose value
names a request another message holds (400). Refusals are audited, bounded per user.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from slack_bolt.middleware import Middleware
from slack_bolt.request import BoltRequest
from slack_bolt.response import BoltResponse
from slack_sdk import WebClient

from bot.core.model import AccessRequest
from bot.decision.slack.views.blocks import APPROVE, BREAK_GLASS, DENY, EXTEND, RELEASE, REVOKE
from bot.runtime import Runtime
from bot.store import keys
from bot.store.refusals import record_refusal

log = logging.getLogger("jit.slack")

#: The header the Socket Mode handler puts the envelope id in (an envelope has no signature).
ENVELOPE_HEADER = "x-jit-envelope-id"
#: How long the serving process waits for `auth.test` when it must learn its workspace.
AUTH_TEST_TIMEOUT_S = 2.0
#: Context key: request id → the request as the button check read it (a listener's first look).
LOADED = "jit_loaded_requests"
#: How long a request (signature) or envelope id is remembered: twice Slack's retry window.
SEEN_FOR_S = 600

# Fields Slack always sends as objects; Bolt's routing and logging call `.get` on them.
_OBJECT_FIELDS = ("user", "view", "container", "channel", "message", "event", "state")


class Provide(Middleware):
    """The first middleware: listeners and the guards below find the process's parts in
    `context["jit"]`."""

    def __init__(self, rt: Runtime):
        self.rt = rt

    def process(self, *, req: BoltRequest, resp: BoltResponse, next: Callable[[], BoltResponse]) -> BoltResponse:  # noqa: A002
        req.context["jit"] = self.rt
        return next()


class Guard(Middleware):
    """Refuses what jit must not act on, before any listener is matched.

    A `Middleware` subclass, not a function given to `app.use`: Bolt builds every argument a
    function middleware could ask for (`action`, `view`, …) from the payload, and a hostile
    payload would crash that before this check runs.
    """

    def process(self, *, req: BoltRequest, resp: BoltResponse, next: Callable[[], BoltResponse]) -> BoltResponse:  # noqa: A002
        refusal = refusal_of(req.context["jit"], req)
        if refusal is None:
            return next()
        status, why = refusal
        return BoltResponse(status=status, body=why, headers={"content-type": "text/plain; charset=utf-8"})


def refusal_of(rt: Runtime, req: BoltRequest) -> tuple[int, str] | None:
    """(HTTP status, why) when jit must not act on this request, else None."""
    payload = req.body
    if not isinstance(payload, dict) or not slack_shaped(payload):
        return 400, "malformed payload"
    if _names_no_workspace(payload):
        return None  # Bolt answers these itself and runs no listener
    expected = home_team(rt)
    if expected is None:
        # Fail closed, but not for good: Slack retries, and nothing is marked seen yet.
        return 503, "jit cannot tell its Slack workspace yet (auth.test failed); retry shortly"
    raw_user = payload.get("user")
    user = _text(raw_user.get("id") if isinstance(raw_user, dict) else payload.get("user_id"))
    if not rt.redis.set(_seen_key(req), "1", nx=True, ex=SEEN_FOR_S):
        # the request is genuine (signed, or on our socket), so Slack vouches for the user: a trace
        record_refusal(rt.redis, rt.audit, "slack.refused", actor=user, details={"why": "replayed request"})
        return 401, "replayed request"
    team = _text(_team_of(payload))
    if team != expected:
        why = {"why": "other workspace", "team": team} if team else {"why": "no workspace"}
        record_refusal(rt.redis, rt.audit, "slack.refused", actor=user, details=why)
        return 401, "this workspace may not use jit"
    if payload.get("type") == "block_actions":
        loaded: dict[str, AccessRequest] = {}
        req.context[LOADED] = loaded
        return _check_buttons(rt, payload, user, loaded)
    return None


def _seen_key(req: BoltRequest) -> str:
    envelope = _first(req.headers.get(ENVELOPE_HEADER))
    if envelope:
        return keys.socket_envelope(envelope)
    return keys.replay(_first(req.headers.get("x-slack-signature")) or "")


def _first(value: object) -> str | None:
    if isinstance(value, list | tuple):
        value = value[0] if value else None
    return value if isinstance(value, str) and value else None


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


def slack_shaped(payload: dict) -> bool:
    """Whether Bolt's matchers and our listeners can read this payload without crashing."""
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


def _check_buttons(
    rt: Runtime, payload: dict, user: str | None, loaded: dict[str, AccessRequest]
) -> tuple[int, str] | None:
    """A button's value is a lookup key: it must name the request whose message holds it. The
    requests read for the check are kept in `loaded` for the listener (one read per click)."""
    container = payload.get("container") or {}
    for act in payload.get("actions") or []:
        if not isinstance(act, dict) or act.get("action_id") not in (
            APPROVE,
            DENY,
            REVOKE,
            BREAK_GLASS,
            RELEASE,
            EXTEND,
        ):
            continue
        rid = str(act.get("value") or "")
        if container.get("type") != "message":
            continue  # App Home and modals: the request id is checked against the store only
        req = rt.store.get(rid)
        if req is None:
            continue  # the listener answers "no such request"
        loaded[rid] = req
        # no message of ours holds this request yet, or another message does (Extend and Release
        # also sit in the request's "expires in 5 min" note in its thread)
        held_by = {req.message_ts}
        if act.get("action_id") in (RELEASE, EXTEND):
            held_by.add(rt.store.fields(rid, "warn_ts").get("warn_ts"))
        if container.get("message_ts") not in held_by - {None}:
            record_refusal(
                rt.redis,
                rt.audit,
                "slack.refused",
                request_id=rid,
                action=req.action,
                actor=user,
                details={"why": "button value names a request that is not this message's"},
            )
            return 400, "this button does not belong to that request"
    return None
