"""Slack traffic over Socket Mode: the same Bolt App and the same guards as `/slack/events`.

With `SLACK_APP_TOKEN` (xapp-…) set, `jit serve` opens one Socket Mode connection per server
process (`apps.connections.open` → a WebSocket URL). Slack spreads envelopes over all open
sockets of the app, so every replica handles any click: all state is in Redis. Socket Mode
skips request signing (the socket is authenticated by the app-level token); the checks Bolt
does not make (replays, foreign workspaces, buttons naming another message's request) run
as Bolt middleware, exactly as for HTTP (bot/decision/slack/middleware.py). While the home workspace cannot be
known (no SLACK_TEAM_ID, auth.test failing) an envelope is left unacked, so Slack re-sends it.

The client is slack_sdk's built-in one (no dependency beyond slack_sdk); it reconnects on its
own when Slack closes a socket (`disconnect` messages, deploys).
"""

from __future__ import annotations

import logging
import threading
import time

from slack_bolt import App
from slack_bolt.adapter.socket_mode.builtin import SocketModeHandler
from slack_bolt.adapter.socket_mode.internals import build_headers, send_response
from slack_bolt.request import BoltRequest
from slack_sdk.socket_mode.builtin import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse

from bot.decision.slack.app import build_app
from bot.decision.slack.middleware import ENVELOPE_HEADER
from bot.runtime import Runtime

log = logging.getLogger("jit.slack.socket")


class JitSocketModeHandler(SocketModeHandler):
    """Bolt's Socket Mode handler: every envelope goes through the same Bolt middleware as HTTP,
    with its envelope id standing in for a signature (the replay guard)."""

    def __init__(self, rt: Runtime, app: App, **kw) -> None:
        token = rt.settings.slack_app_token
        if token is None:
            raise ValueError("SLACK_APP_TOKEN is not set")
        super().__init__(app, app_token=token.get_secret_value(), logger=log, **kw)
        self.rt = rt

    def handle(self, client: SocketModeClient, req: SocketModeRequest) -> None:  # type: ignore[override]
        start = time.time()
        if not isinstance(req.payload, dict):
            client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
            return
        headers = {**(build_headers(req) or {}), ENVELOPE_HEADER: req.envelope_id}
        bolt_resp = self.app.dispatch(BoltRequest(mode="socket_mode", body=req.payload, headers=headers))
        if bolt_resp.status == 503:
            # Not now (the workspace is unknown): no ack, so Slack sends the envelope again.
            log.warning("socket mode envelope %s not handled yet: %s", req.envelope_id, bolt_resp.body)
            return
        if bolt_resp.status != 200:
            # Refused: ack anyway, an unacked envelope is re-sent and the answer would not change.
            log.warning("socket mode envelope %s refused: %s", req.envelope_id, bolt_resp.body)
            client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))
            return
        send_response(client, req, bolt_resp, start)


def start_socket_mode(rt: Runtime, app: App | None = None, **kw) -> JitSocketModeHandler:
    """Connect and return at once; the client's own threads receive, ack and reconnect.

    If Slack cannot be reached now (or refuses the token), keep trying in the background
    with backoff rather than stopping the server: the pipeline hook does not need Slack.
    """
    handler = JitSocketModeHandler(rt, app or build_app(rt), **kw)
    try:
        handler.connect()
        log.info("socket mode connected")
    except Exception as e:  # noqa: BLE001
        log.warning("socket mode connect failed (%s); retrying in the background", type(e).__name__)
        threading.Thread(target=_keep_connecting, args=(handler,), name="jit-socket-mode", daemon=True).start()
    return handler


def _keep_connecting(handler: JitSocketModeHandler) -> None:
    delay = 1.0
    while not handler.client.closed:
        time.sleep(delay)
        try:
            handler.client.connect_to_new_endpoint()
            if handler.client.is_connected():
                log.info("socket mode connected")
                return
        except Exception as e:  # noqa: BLE001
            log.warning("socket mode connect failed (%s)", type(e).__name__)
        delay = min(delay * 2, 60.0)
