"""The Slack the benchmarks talk to: the Web API calls jit makes, recorded, and signed clicks.

A deliberately small stand-in, so `jit bench` runs from an installed package (a container image)
where the test suite's full Slack fake (tests/fakes/slack/) is not shipped. It answers what jit
calls while a request is asked, posted, approved and granted — `auth.test`, `chat.postMessage`
(with Slack's per-channel limit when asked: 429 + Retry-After), `chat.update` (with Tier 3's
workspace limit when asked),
`conversations.history`, `conversations.open`, `chat.postEphemeral`, `views.publish` — in Slack's
wire format, and records every call with its time. Anything else answers `unknown_method`, as
Slack does, so a new call shows up as an error rather than as a silent success.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode

from slack_sdk.signature import SignatureVerifier

TEAM_ID = "T0BENCH"
BOT_USER_ID = "U0JITBOT"
BOT_ID = "B0JITBOT"
APP_ID = "A0JITAPP"
FORM = "application/x-www-form-urlencoded"


@dataclass(frozen=True)
class Call:
    """One Web API call the stand-in answered."""

    method: str
    params: dict[str, Any]
    time: float
    status: int
    response: dict[str, Any]

    @property
    def ok(self) -> bool:
        return self.status == 200 and bool(self.response.get("ok"))


class SlackStandIn:
    """The Slack Web API on a local threaded HTTP server (`api_url` is WebClient's base_url)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: list[Call] = []
        self._messages: dict[str, list[dict[str, Any]]] = {}  # channel → top-level messages
        self._last_ts = 0
        self._rate: tuple[float, float] | None = None  # (per second, burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # channel → (tokens, at)
        self._update_rate: tuple[float, float] | None = None  # chat.update: (per second, burst)
        self._update_bucket: tuple[float, float] | None = None  # (tokens, at), whole workspace
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> SlackStandIn:
        owner = self

        class Handler(_Handler):
            slack = owner

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def api_url(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/"

    def calls(self, method: str | None = None) -> list[Call]:
        with self._lock:
            return [c for c in self._calls if method is None or c.method == method]

    def enforce_channel_rate(self, per_second: float = 1.0, burst: int = 3) -> None:
        """Slack's `chat.postMessage` limit: a token bucket per channel; over it, 429 + Retry-After."""
        with self._lock:
            self._rate = (float(per_second), float(burst))
            self._buckets.clear()

    def enforce_update_rate(self, per_minute: float = 50.0, burst: int = 3) -> None:
        """Slack's Tier 3 for `chat.update` (about 50 a minute per workspace, short bursts tolerated):
        a token bucket for the whole workspace; over it, 429 + Retry-After."""
        with self._lock:
            self._update_rate = (per_minute / 60.0, float(burst))
            self._update_bucket = None

    def seed_messages(self, channel: str, texts: list[str]) -> list[str]:
        """Messages already in `channel` (as if posted earlier); returns their ts, in order."""
        with self._lock:
            out = []
            for text in texts:
                msg = {"type": "message", "user": BOT_USER_ID, "bot_id": BOT_ID, "ts": self._next_ts(), "text": text}
                self._messages.setdefault(channel, []).append(msg)
                out.append(msg["ts"])
            return out

    # ------------------------------------------------------------------ the methods

    def answer(self, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self._lock:
            status, body, headers = self._answer(method, params)
            self._calls.append(Call(method, params, time.time(), status, body))
        return status, body, headers

    def _answer(self, method: str, p: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
        if method == "auth.test":
            return 200, {"ok": True, "team_id": TEAM_ID, "user_id": BOT_USER_ID, "bot_id": BOT_ID}, {}
        if method == "chat.postMessage":
            channel = p.get("channel") or ""
            retry = self._limited(channel)
            if retry is not None:
                return 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(retry)}
            msg = {"type": "message", "user": BOT_USER_ID, "bot_id": BOT_ID, "ts": self._next_ts()}
            msg.update({k: p[k] for k in ("text", "blocks", "metadata", "thread_ts") if p.get(k) is not None})
            if not p.get("thread_ts"):
                self._messages.setdefault(channel, []).append(msg)
            return 200, {"ok": True, "channel": channel, "ts": msg["ts"], "message": msg}, {}
        if method == "chat.update":
            retry = self._update_limited()
            if retry is not None:
                return 429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(retry)}
            for msg in self._messages.get(p.get("channel") or "", []):
                if msg["ts"] == p.get("ts"):
                    msg.update({k: p[k] for k in ("text", "blocks", "metadata") if k in p})
                    return 200, {"ok": True, "channel": p["channel"], "ts": msg["ts"], "message": msg}, {}
            return 200, {"ok": False, "error": "message_not_found"}, {}
        if method == "conversations.history":
            newest_first = list(reversed(self._messages.get(p.get("channel") or "", [])))
            return 200, {"ok": True, "messages": newest_first[: int(p.get("limit") or 100)], "has_more": False}, {}
        if method == "conversations.open":
            return 200, {"ok": True, "channel": {"id": "D" + str(p.get("users", "U0"))[1:]}}, {}
        if method in ("chat.postEphemeral", "views.publish"):
            return 200, {"ok": True, "message_ts": self._next_ts()}, {}
        return 200, {"ok": False, "error": "unknown_method", "req_method": method}, {}

    def _next_ts(self) -> str:
        micros = max(int(time.time() * 1_000_000), self._last_ts + 1)
        self._last_ts = micros
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _limited(self, channel: str) -> int | None:
        """Seconds to wait if `channel` is over its rate, else None (a post is counted)."""
        if self._rate is None:
            return None
        rate, burst = self._rate
        now = time.monotonic()
        tokens, at = self._buckets.get(channel, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        if tokens >= 1.0:
            self._buckets[channel] = (tokens - 1.0, now)
            return None
        self._buckets[channel] = (tokens, now)
        return max(1, math.ceil((1.0 - tokens) / rate))

    def _update_limited(self) -> int | None:
        """Seconds to wait if `chat.update` is over the workspace's rate, else None (a call is counted)."""
        if self._update_rate is None:
            return None
        rate, burst = self._update_rate
        now = time.monotonic()
        tokens, at = self._update_bucket or (burst, now)
        tokens = min(burst, tokens + (now - at) * rate)
        if tokens >= 1.0:
            self._update_bucket = (tokens - 1.0, now)
            return None
        self._update_bucket = (tokens, now)
        return max(1, math.ceil((1.0 - tokens) / rate))


class _Handler(BaseHTTPRequestHandler):
    slack: SlackStandIn

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def do_POST(self) -> None:
        method = self.path.split("?")[0].removeprefix("/api/")
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("Content-Type", "").startswith("application/json"):
            params = json.loads(raw or b"{}")
        else:
            params = {k: v[-1] for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()}
            for k in ("blocks", "metadata"):  # WebClient sends these as JSON strings in a form
                if isinstance(params.get(k), str) and params[k][:1] in "[{":
                    params[k] = json.loads(params[k])
        status, body, headers = self.slack.answer(method, params)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST


# ---------------------------------------------------------------------- Slack → jit


def signed_click(
    secret: str, action_id: str, value: str, user_id: str, channel: str, message_ts: str | None
) -> tuple[bytes, dict[str, str]]:
    """A button click as Slack POSTs it (form field `payload`), with its signature headers."""
    ts = message_ts or f"{time.time():.6f}"
    payload = {
        "type": "block_actions",
        "user": {"id": user_id, "username": user_id.lower(), "name": user_id.lower(), "team_id": TEAM_ID},
        "api_app_id": APP_ID,
        "token": "deprecated-verification-token",
        "container": {"type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": False},
        "trigger_id": f"{int(time.time())}.{value}",
        "team": {"id": TEAM_ID, "domain": "jit-bench"},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel, "name": "jit-bench"},
        "message": {"type": "message", "user": BOT_USER_ID, "bot_id": BOT_ID, "ts": ts, "text": ""},
        "state": {"values": {}},
        "actions": [
            {
                "action_id": action_id,
                "block_id": "actions",
                "value": value,
                "type": "button",
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }
    body = urlencode({"payload": json.dumps(payload, separators=(",", ":"))}).encode()
    timestamp = str(int(time.time()))
    signature = SignatureVerifier(secret).generate_signature(timestamp=timestamp, body=body)
    return body, {"Content-Type": FORM, "X-Slack-Request-Timestamp": timestamp, "X-Slack-Signature": signature}
