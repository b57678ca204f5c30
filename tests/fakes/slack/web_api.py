"""A local test double for Slack's boundary, speaking Slack's real wire formats.

Two directions are covered:

* **Bot -> Slack** (:class:`SlackFake`): a threaded HTTP server on ``127.0.0.1``
  that answers the Web API the way ``slack_sdk.WebClient(base_url=fake.api_url)``
  calls it (POST form / JSON bodies, GET query strings, ``Authorization: Bearer``),
  records every call, keeps the state of posted messages and views, and can inject
  faults at run time (5xx, 429 + ``Retry-After``, slowness, Slack-level errors,
  a per-channel ``chat.postMessage`` limiter). It also serves ``response_url``\\ s.

* **Slack -> bot** (module functions): builders for exactly what Slack POSTs to
  the bot's request URL -- slash commands (plain form), interaction payloads
  (form field ``payload=<json>``), Events API callbacks (JSON) -- and
  :func:`sign` for the ``X-Slack-Signature`` / ``X-Slack-Request-Timestamp``
  headers. Each builder returns ``(body_bytes, content_type)``; sign the *same
  bytes* you send.

Typical use::

    with SlackFake(token="xoxb-test", usergroups={"S0APPROVERS": ["U1", "U2"]}) as fake:
        client = WebClient(token="xoxb-test", base_url=fake.api_url)
        ...
        body, ctype = block_action("approve", "req-42", user_id="U1",
                                   response_url=fake.response_url("click1"))
        flask_client.post("/slack/events", data=body, headers=sign(SECRET, body, content_type=ctype))
        fake.wait_for(lambda c: c.method == "chat.update")
        assert "sekrit" not in fake.all_text()

A pytest fixture is a two-liner::

    @pytest.fixture
    def slack():
        with SlackFake() as fake:
            yield fake

Stdlib only.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import itertools
import json
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

__all__ = [
    "APP_ID",
    "BOT_ID",
    "BOT_USER_ID",
    "TEAM_DOMAIN",
    "TEAM_ID",
    "VERIFICATION_TOKEN",
    "Call",
    "SlackFake",
    "Stats",
    "app_home_opened",
    "block_action",
    "event_callback",
    "sign",
    "signed",
    "slash_command",
    "url_verification",
    "view_submission",
]

# Identities shared by the fake server and the payload builders so that they agree.
TEAM_ID = "T0TEAM"
TEAM_DOMAIN = "jit-test"
APP_ID = "A0JITAPP"
BOT_USER_ID = "U0JITBOT"
BOT_ID = "B0JITBOT"
VERIFICATION_TOKEN = "deprecated-verification-token"  # Slack still sends `token`; never trust it.

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"

# Form fields that WebClient sends as JSON-encoded strings when it uses a form body.
_JSON_FIELDS = ("blocks", "attachments", "view", "metadata")
_SECRET_PARAMS = ("token", "client_secret")

Body = tuple[bytes, str]  # (body bytes, Content-Type)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class Call:
    """One request the fake received (Web API method or ``response_url`` POST).

    ``method`` is the Web API method name (``"chat.postMessage"``) or
    ``"response_url"``; ``params`` merges query string and body (JSON-string form
    fields such as ``blocks`` are decoded); ``status``/``response`` are what the
    fake answered.
    """

    method: str
    params: dict[str, Any]
    headers: dict[str, str]
    time: float
    status: int = 200
    response: Any = None
    key: str | None = None  # response_url key, for method == "response_url"

    @property
    def ok(self) -> bool:
        return (
            self.status == 200 and isinstance(self.response, dict) and bool(self.response.get("ok"))
        )

    @property
    def error(self) -> str | None:
        return self.response.get("error") if isinstance(self.response, dict) else None


@dataclass
class Stats:
    """Counters of what the fake answered."""

    requests: int = 0
    rate_limited: int = 0  # HTTP 429s sent (injected or from the channel limiter)
    failed: int = 0  # injected HTTP 5xx (or other status) answers
    api_errors: int = 0  # HTTP 200 answers with ok=false


@dataclass
class _Fault:
    kind: str  # "fail" | "ratelimit" | "slow" | "error"
    methods: frozenset[str] | None
    remaining: int | None
    status: int = 503
    retry_after: int = 1
    seconds: float = 0.0
    error: str = ""
    body: str | None = None

    def matches(self, method: str) -> bool:
        return self.methods is None or method in self.methods


@dataclass
class _Bucket:
    tokens: float
    last: float


@dataclass
class _Reply:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


def _methods(methods: str | Iterable[str] | None) -> frozenset[str] | None:
    if methods is None:
        return None
    if isinstance(methods, str):
        return frozenset({methods})
    return frozenset(methods)


# --------------------------------------------------------------------------- server


class SlackFake:
    """Slack Web API + ``response_url`` double on a local threaded HTTP server.

    :param token: the bot token the fake accepts; ``None`` accepts any non-empty token.
    :param usergroups: ``{usergroup_id: [user_id, ...]}`` for ``usergroups.users.list``.
    :param users: ``{user_id: {...}}`` for ``users.info`` / ``users.lookupByEmail``.
        Values may be full Slack user objects or shorthand such as
        ``{"name": "alice", "email": "a@example.com", "real_name": "Alice"}``.
    :param channels: if given, only these channel ids exist (others: ``channel_not_found``);
        DM channels opened via ``conversations.open`` always exist.

    ``usergroups`` and ``users`` are public attributes; tests may mutate them at run time.
    """

    def __init__(
        self,
        token: str | None = "xoxb-test",
        usergroups: Mapping[str, Iterable[str]] | None = None,
        users: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        channels: Iterable[str] | None = None,
        team_id: str = TEAM_ID,
        team_domain: str = TEAM_DOMAIN,
        bot_user_id: str = BOT_USER_ID,
        bot_id: str = BOT_ID,
        app_id: str = APP_ID,
    ) -> None:
        self.token = token
        self.usergroups: dict[str, list[str]] = {k: list(v) for k, v in (usergroups or {}).items()}
        self.users: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (users or {}).items()}
        self.channels: set[str] | None = set(channels) if channels is not None else None
        self.team_id, self.team_domain = team_id, team_domain
        self.bot_user_id, self.bot_id, self.app_id = bot_user_id, bot_id, app_id

        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._ids = itertools.count(1)
        self._last_ts = 0
        self._channel_rate: tuple[float, float] | None = None  # (per_second, burst)
        self._reset_state()

    # ---- lifecycle -------------------------------------------------------------

    def start(self) -> SlackFake:
        if self._server is not None:
            return self
        fake = self

        class Handler(_Handler):
            owner = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            name="slackfake",
            kwargs={"poll_interval": 0.05},
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if getattr(self, "_socket_mode", None) is not None:
            self._socket_mode.stop()
            self._socket_mode = None
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> SlackFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        if self._server is None:
            raise RuntimeError(
                "SlackFake is not started (use `with SlackFake() as fake:` or .start())"
            )
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def api_url(self) -> str:
        """Pass as ``WebClient(base_url=...)``; ends with ``/``."""
        return f"{self.base_url}/api/"

    # ---- state & recording ----------------------------------------------------

    def _reset_state(self) -> None:
        self._calls: list[Call] = []
        self._messages: dict[str, dict[str, Any]] = {}  # ts -> message (all channels)
        self._deleted: dict[str, dict[str, Any]] = {}
        self._ephemerals: list[dict[str, Any]] = []
        self._views: dict[str, dict[str, Any]] = {}
        self._home: dict[str, dict[str, Any]] = {}
        self._dms: dict[str, str] = {}
        self._responses: dict[str, list[Any]] = {}
        self._response_bindings: dict[str, tuple[str, str]] = {}
        self._faults: list[_Fault] = []
        self._buckets: dict[str, _Bucket] = {}
        self.stats = Stats()

    def reset(self) -> None:
        """Forget calls, messages, views, responses, faults, limiter and stats (keeps config)."""
        with self._lock:
            self._reset_state()
            self._channel_rate = None

    def calls(self, method: str | None = None) -> list[Call]:
        """Recorded calls in arrival order, optionally only one method."""
        with self._lock:
            return [c for c in self._calls if method is None or c.method == method]

    def messages(self, channel: str | None = None) -> dict[str, dict[str, Any]]:
        """Current (post-update, non-deleted) messages keyed by ts, in posting order.

        Each message: ``channel, ts, text, blocks, attachments, thread_ts, metadata,
        user, bot_id, edited`` (``edited`` counts ``chat.update``/``replace_original``).
        """
        with self._lock:
            return {
                ts: copy.deepcopy(m)
                for ts, m in self._messages.items()
                if channel is None or m["channel"] == channel
            }

    def message(self, ts: str) -> dict[str, Any]:
        """One current message by ts (KeyError if none)."""
        with self._lock:
            return copy.deepcopy(self._messages[ts])

    def ephemerals(
        self, channel: str | None = None, user: str | None = None
    ) -> list[dict[str, Any]]:
        """Ephemeral messages sent with ``chat.postEphemeral``."""
        with self._lock:
            return [
                copy.deepcopy(m)
                for m in self._ephemerals
                if (channel is None or m["channel"] == channel)
                and (user is None or m["user"] == user)
            ]

    def views(self) -> dict[str, dict[str, Any]]:
        """Modals opened with ``views.open`` (current state after ``views.update``), by view id."""
        with self._lock:
            return copy.deepcopy(self._views)

    def home(self, user_id: str) -> dict[str, Any] | None:
        """The App Home view last published for ``user_id``."""
        with self._lock:
            return copy.deepcopy(self._home.get(user_id))

    def dm_channel(self, user_id: str) -> str:
        """The DM channel id ``conversations.open`` returns for ``user_id`` (stable)."""
        with self._lock:
            if user_id not in self._dms:
                self._dms[user_id] = f"D{next(self._ids):08d}"
            return self._dms[user_id]

    def response_url(
        self, key: str, *, channel: str | None = None, message_ts: str | None = None
    ) -> str:
        """A ``response_url`` served by this fake. If bound to ``channel``+``message_ts``,
        ``replace_original``/``delete_original`` POSTs apply to that message."""
        with self._lock:
            self._responses.setdefault(key, [])
            if channel and message_ts:
                self._response_bindings[key] = (channel, message_ts)
        return f"{self.base_url}/response/{key}"

    def responses(self, key: str) -> list[Any]:
        """JSON bodies POSTed to ``response_url(key)``, in order."""
        with self._lock:
            return copy.deepcopy(self._responses.get(key, []))

    def all_text(self) -> str:
        """Everything the bot sent to Slack (all params except tokens, all response_url
        bodies), serialised as JSON lines -- for "no secret ever appears" assertions."""
        with self._lock:
            lines = []
            for c in self._calls:
                params = {k: v for k, v in c.params.items() if k not in _SECRET_PARAMS}
                lines.append(f"{c.method} {json.dumps(params, sort_keys=True, ensure_ascii=False)}")
            return "\n".join(lines)

    def wait_for(
        self,
        predicate: Callable[[Call], bool] | str,
        timeout: float = 5.0,
        *,
        interval: float = 0.01,
    ) -> Call:
        """Poll until a recorded call matches; return it. ``predicate`` may be a method name.

        Raises ``AssertionError`` listing every recorded call if none matches in time.
        """
        pred = (lambda c: c.method == predicate) if isinstance(predicate, str) else predicate
        deadline = time.monotonic() + timeout
        while True:
            for c in self.calls():
                if pred(c):
                    return c
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"no Slack call matched {getattr(predicate, '__name__', predicate)!r} "
                    f"within {timeout}s; calls so far:\n{self.dump()}"
                )
            time.sleep(interval)

    def dump(self) -> str:
        """Readable listing of recorded calls (tokens removed)."""
        out = []
        for i, c in enumerate(self.calls()):
            params = {k: v for k, v in c.params.items() if k not in _SECRET_PARAMS}
            p = json.dumps(params, ensure_ascii=False)
            if len(p) > 400:
                p = p[:400] + "..."
            out.append(
                f"  #{i} {c.method}{f' [{c.key}]' if c.key else ''} -> {c.status} "
                f"{json.dumps(c.response)[:120]}\n      {p}"
            )
        return "\n".join(out) or "  (none)"

    # ---- faults ---------------------------------------------------------------

    def fail_with(
        self,
        status: int = 503,
        times: int | None = None,
        methods: str | Iterable[str] | None = None,
        *,
        body: str | None = None,
    ) -> None:
        """Answer matching requests with HTTP ``status`` (``times`` times, or until cleared).
        ``body`` defaults to ``{"ok": false, "error": "internal_error"}``-style JSON."""
        self._add(_Fault("fail", _methods(methods), times, status=status, body=body))

    def rate_limit(
        self,
        retry_after: int = 1,
        times: int | None = 1,
        methods: str | Iterable[str] | None = None,
    ) -> None:
        """Answer matching requests with HTTP 429, ``Retry-After: retry_after`` and
        ``{"ok": false, "error": "ratelimited"}``."""
        self._add(_Fault("ratelimit", _methods(methods), times, retry_after=int(retry_after)))

    def slow(
        self, seconds: float, methods: str | Iterable[str] | None = None, times: int | None = None
    ) -> None:
        """Delay matching requests by ``seconds`` before answering."""
        self._add(_Fault("slow", _methods(methods), times, seconds=seconds))

    def api_error(
        self, error: str, methods: str | Iterable[str] | None = None, times: int | None = None
    ) -> None:
        """Answer matching requests HTTP 200 ``{"ok": false, "error": error}``
        (e.g. ``plan_upgrade_required``, ``expired_trigger_id``, ``channel_not_found``)."""
        self._add(_Fault("error", _methods(methods), times, error=error))

    def clear_faults(self) -> None:
        """Remove all injected faults and the channel limiter."""
        with self._lock:
            self._faults.clear()
            self._channel_rate = None
            self._buckets.clear()

    def enforce_channel_rate(self, per_second: float = 1.0, burst: int = 3) -> None:
        """Token bucket per channel for ``chat.postMessage`` (Slack: ~1/s/channel, short
        bursts tolerated); over the limit -> 429 with ``Retry-After`` in whole seconds."""
        with self._lock:
            self._channel_rate = (float(per_second), float(burst))
            self._buckets.clear()

    def socket_mode(self, app_token: str = "xapp-1-A0JITAPP-1-test") -> SocketModeServer:
        """Serve Socket Mode for ``app_token``: ``apps.connections.open`` and a local
        WebSocket server speaking Slack's envelope format (see :class:`SocketModeServer`)."""
        with self._lock:
            if getattr(self, "_socket_mode", None) is None:
                self._socket_mode = SocketModeServer(self, app_token)
            return self._socket_mode

    def _add(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take_faults(self, method: str) -> tuple[float, _Fault | None]:
        """Consume matching faults: total delay, and the first answering fault."""
        delay, answer = 0.0, None
        with self._lock:
            for f in list(self._faults):
                if not f.matches(method):
                    continue
                if f.kind == "slow":
                    delay += f.seconds
                elif answer is None:
                    answer = f
                else:
                    continue
                if f.remaining is not None:
                    f.remaining -= 1
                    if f.remaining <= 0:
                        self._faults.remove(f)
        return delay, answer

    def _channel_limited(self, channel: str) -> int | None:
        """Retry-After seconds if ``channel`` is over its rate, else None (consumes a token)."""
        if self._channel_rate is None:
            return None
        rate, burst = self._channel_rate
        now = time.monotonic()
        b = self._buckets.setdefault(channel, _Bucket(tokens=burst, last=now))
        b.tokens = min(burst, b.tokens + (now - b.last) * rate)
        b.last = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return None
        return max(1, math.ceil((1.0 - b.tokens) / rate))

    # ---- request dispatch -----------------------------------------------------

    def _handle(
        self, kind: str, name: str, params: dict[str, Any], headers: dict[str, str]
    ) -> _Reply:
        method = "response_url" if kind == "response" else name
        delay, fault = self._take_faults(method)
        if delay:
            time.sleep(delay)
        with self._lock:
            self.stats.requests += 1
            reply = self._answer(kind, name, method, params, headers, fault)
            if reply.status == 429:
                self.stats.rate_limited += 1
            elif reply.status != 200:
                self.stats.failed += 1
            elif isinstance(reply.body, dict) and reply.body.get("ok") is False:
                self.stats.api_errors += 1
            self._calls.append(
                Call(
                    method,
                    params,
                    headers,
                    time.time(),
                    reply.status,
                    reply.body,
                    name if kind == "response" else None,
                )
            )
        return reply

    def _answer(
        self,
        kind: str,
        name: str,
        method: str,
        params: dict[str, Any],
        headers: dict[str, str],
        fault: _Fault | None,
    ) -> _Reply:
        if fault is not None:
            if fault.kind == "ratelimit":
                return _Reply(
                    429,
                    {"ok": False, "error": "ratelimited"},
                    {"Retry-After": str(fault.retry_after)},
                )
            if fault.kind == "fail":
                body = (
                    fault.body
                    if fault.body is not None
                    else {"ok": False, "error": "internal_error"}
                )
                return _Reply(fault.status, body)
            if fault.kind == "error":
                return _Reply(200, {"ok": False, "error": fault.error})
        if kind == "response":
            return self._response_post(name, params)

        if name == "apps.connections.open" and getattr(self, "_socket_mode", None) is not None:
            return self._socket_mode._open(headers)  # app-level token, not the bot token
        token = _bearer(headers) or params.get("token")
        if not token:
            return _Reply(200, {"ok": False, "error": "not_authed"})
        if self.token is not None and not hmac.compare_digest(str(token), self.token):
            return _Reply(200, {"ok": False, "error": "invalid_auth"})

        handler = _API.get(name)
        if handler is None:
            return _Reply(200, {"ok": False, "error": "unknown_method", "req_method": name})
        result = handler(self, params)
        if isinstance(result, _Reply):
            return result
        return _Reply(200, result)

    # ---- helpers used by API methods -------------------------------------------

    def _next_ts(self) -> str:
        """Unique, strictly increasing Slack ts ("1700000000.000100" shape)."""
        micros = max(int(time.time() * 1_000_000), self._last_ts + 1)
        self._last_ts = micros
        return f"{micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _resolve_channel(self, channel: str | None) -> str | None:
        if not channel:
            return None
        if channel[0] in "UW":  # posting to a user id lands in the DM with the bot
            return self.dm_channel(channel)
        if (
            self.channels is not None
            and channel not in self.channels
            and channel not in self._dms.values()
        ):
            return None
        return channel

    def _message_obj(self, m: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "message",
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "team": self.team_id,
            "text": m["text"],
            "ts": m["ts"],
        }
        for k in ("blocks", "attachments", "thread_ts", "metadata"):
            if m.get(k) is not None:
                out[k] = copy.deepcopy(m[k])
        if m.get("edited"):
            out["edited"] = {"user": self.bot_user_id, "ts": m["edited_ts"]}
        return out

    def _user_obj(self, user_id: str) -> dict[str, Any]:
        """A Slack user object from the configured entry (full object or shorthand)."""
        cfg = dict(self.users[user_id])
        profile = dict(cfg.pop("profile", {}))
        for k in ("email", "display_name"):  # shorthand keys that live in `profile`
            if k in cfg:
                profile.setdefault(k, cfg.pop(k))
        name = cfg.get("name", user_id.lower())
        real_name = cfg.get("real_name", profile.get("real_name", name))
        profile.setdefault("real_name", real_name)
        profile.setdefault("display_name", name)
        user: dict[str, Any] = {
            "id": user_id,
            "team_id": self.team_id,
            "name": name,
            "deleted": False,
            "real_name": real_name,
            "tz": "Etc/UTC",
            "is_admin": False,
            "is_owner": False,
            "is_bot": False,
            "is_app_user": False,
            "updated": 1700000000,
        }
        user.update(cfg)
        user["profile"] = profile
        return user

    def _response_post(self, key: str, params: dict[str, Any]) -> _Reply:
        self._responses.setdefault(key, []).append(copy.deepcopy(params))
        binding = self._response_bindings.get(key)
        if binding:
            channel, ts = binding
            msg = self._messages.get(ts)
            if msg is not None and msg["channel"] == channel:
                if _truthy(params.get("delete_original")):
                    self._deleted[ts] = self._messages.pop(ts)
                elif _truthy(params.get("replace_original")):
                    self._apply_update(msg, params)
        return _Reply(200, {"ok": True})

    def _apply_update(self, msg: dict[str, Any], params: dict[str, Any]) -> None:
        if "text" in params:
            msg["text"] = params["text"]
        for k in ("blocks", "attachments", "metadata"):
            if k in params:
                msg[k] = copy.deepcopy(params[k])
        msg["edited"] += 1
        msg["edited_ts"] = self._next_ts()


def _truthy(v: Any) -> bool:
    return v is True or (isinstance(v, str) and v.lower() in ("true", "1"))


def _bearer(headers: Mapping[str, str]) -> str | None:
    auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip() or None
    return None


def _err(error: str, **extra: Any) -> dict[str, Any]:
    return {"ok": False, "error": error, **extra}


# --------------------------------------------------------------------------- Web API methods


def _auth_test(fake: SlackFake, p: dict[str, Any]) -> dict[str, Any]:
    return {
        "ok": True,
        "url": f"https://{fake.team_domain}.slack.com/",
        "team": fake.team_domain,
        "user": "jit",
        "team_id": fake.team_id,
        "user_id": fake.bot_user_id,
        "bot_id": fake.bot_id,
        "is_enterprise_install": False,
    }


def _chat_post_message(fake: SlackFake, p: dict[str, Any]) -> dict[str, Any] | _Reply:
    channel = fake._resolve_channel(p.get("channel"))
    if channel is None:
        return _err("channel_not_found")
    if not (p.get("text") or p.get("blocks") or p.get("attachments")):
        return _err("no_text")
    retry = fake._channel_limited(channel)
    if retry is not None:
        return _Reply(429, _err("ratelimited"), {"Retry-After": str(retry)})
    ts = fake._next_ts()
    msg = {
        "channel": channel,
        "ts": ts,
        "text": p.get("text", ""),
        "blocks": copy.deepcopy(p.get("blocks")),
        "attachments": copy.deepcopy(p.get("attachments")),
        "metadata": copy.deepcopy(p.get("metadata")),
        "thread_ts": p.get("thread_ts") or None,
        "user": fake.bot_user_id,
        "bot_id": fake.bot_id,
        "edited": 0,
        "edited_ts": None,
    }
    fake._messages[ts] = msg
    return {"ok": True, "channel": channel, "ts": ts, "message": fake._message_obj(msg)}


def _conversations_history(fake: SlackFake, p: dict[str, Any]) -> dict[str, Any]:
    """Top-level messages of a channel, newest first; `metadata` only with include_all_metadata."""
    channel = fake._resolve_channel(p.get("channel"))
    if channel is None:
        return _err("channel_not_found")
    oldest = float(p.get("oldest") or 0)
    latest = float(p.get("latest") or "inf")
    limit = int(p.get("limit") or 100)
    with_meta = _truthy(p.get("include_all_metadata"))
    found = [
        m for m in fake._messages.values()
        if m["channel"] == channel and not m.get("thread_ts") and oldest < float(m["ts"]) <= latest
    ]
    found.sort(key=lambda m: float(m["ts"]), reverse=True)
    out = []
    for m in found[:limit]:
        obj = fake._message_obj(m)
        if not with_meta:
            obj.pop("metadata", None)
        out.append(obj)
    return {"ok": True, "messages": out, "has_more": len(found) > limit, "pin_count": 0,
            "response_metadata": {"next_cursor": ""}}


def _find_message(fake: SlackFake, p: dict[str, Any]) -> dict[str, Any] | None:
    ts, channel = p.get("ts"), p.get("channel")
    msg = fake._messages.get(ts) if ts else None
    if msg is None or msg["channel"] != fake._resolve_channel(channel):
        return None
    return msg


def _chat_update(fake: SlackFake, p: dict[str, Any]) -> dict[str, Any]:
    if not p.get("channel"):
        return _err("channel_not_found")
    msg = _find_message(fake, p)
    if msg is None:
        return _err("message_not_found")
    if "text" not in p and "blocks" not in p and "attachments" not in p:
        return _err("no_text")
    fake._apply_update(msg, p)
    return {
        "ok": True,
        "channel": msg["channel"],
        "ts": msg["ts"],
        "text": msg["text"],
        "message": fake._message_obj(msg),
    }


def _chat_post_ephemeral(fake: SlackFake, p: dict[str, Any]) -> dict[str, Any]:
    channel = fake._resolve_channel(p.get("channel"))
    if channel is None:
        return _err("channel_not_found")
    if not p.get("user"):
        return _err("user_not_found")
    if not (p.get("text") or p.get("blocks") or p.get("attachments")):
        return _err("no_text")
    ts = fake._next_ts()
    fake._ephemerals.append(
        {
            "channel": channel,
            "user": p["user"],
            "message_ts": ts,
            "text": p.get("text", ""),
            "blocks": copy.deepcopy(p.get("blocks")),
            "thread_ts": p.get("thread_ts") or None,
        }
    )
    return {"ok": True, "message_ts": ts}


def _chat_delete(fake: SlackFake, p: dict[str, Any]) -> dict[str, Any]:
    if not p.get("channel"):
        return _err("channel_not_found")
    msg = _find_message(fake, p)
    if msg is None:
        return _err("message_not_found")
    fake._deleted[msg["ts"]] = fake._messages.pop(msg["ts"])
    return {"ok": True, "channel": msg["channel"], "ts": msg["ts"]}


def _view_obj(
    fake: SlackFake, view: dict[str, Any], view_id: str, root: str | None = None
) -> dict[str, Any]:
    out = {
        "id": view_id,
        "team_id": fake.team_id,
        "type": view.get("type", "modal"),
        "blocks": copy.deepcopy(view.get("blocks", [])),
        "private_metadata": view.get("private_metadata", ""),
        "callback_id": view.get("callback_id", ""),
        "state": {"values": {}},
        "hash": f"{int(time.time())}.{secrets.token_hex(4)}",
        "title": view.get("title"),
        "clear_on_close": bool(view.get("clear_on_close", False)),
        "notify_on_close": bool(view.get("notify_on_close", False)),
        "close": view.get("close"),
        "submit": view.get("submit"),
        "previous_view_id": None,
        "root_view_id": root or view_id,
        "app_id": fake.app_id,
        "external_id": view.get("external_id", ""),
        "app_installed_team_id": fake.team_id,
        "bot_id": fake.bot_id,
    }
    return out


def _views_open(fake: SlackFake, p: dict[str, Any]) -> dict[str, Any]:
    if not p.get("trigger_id") and not p.get("interactivity_pointer"):
        return _err(
            "invalid_arguments",
            response_metadata={"messages": ["[ERROR] missing required field: trigger_id"]},
        )
    view = p.get("view")
    if not isinstance(view, dict):
        return _err(
            "invalid_arguments",
            response_metadata={"messages": ["[ERROR] missing required field: view"]},
        )
    view_id = f"V{next(fake._ids):010d}"
    obj = _view_obj(fake, view, view_id)
    fake._views[view_id] = obj
    return {"ok": True, "view": copy.deepcopy(obj)}


def _views_update(fake: SlackFake, p: dict[str, Any]) -> dict[str, Any]:
    view = p.get("view")
    if not isinstance(view, dict):
        return _err("invalid_arguments")
    current = None
    if p.get("view_id"):
        current = fake._views.get(p["view_id"])
    elif p.get("external_id"):
        current = next(
            (v for v in fake._views.values() if v["external_id"] == p["external_id"]), None
        )
    if current is None:
        return _err("not_found")
    if p.get("hash") and p["hash"] != current["hash"]:
        return _err("hash_conflict")
    obj = _view_obj(fake, view, current["id"], current["root_view_id"])
    fake._views[current["id"]] = obj
    return {"ok": True, "view": copy.deepcopy(obj)}


def _views_publish(fake: SlackFake, p: dict[str, Any]) -> dict[str, Any]:
    user_id, view = p.get("user_id"), p.get("view")
    if not user_id:
        return _err("invalid_arguments")
    if not isinstance(view, dict):
        return _err("invalid_arguments")
    if view.get("type") != "home":
        return _err(
            "invalid_arguments", response_metadata={"messages": ["[ERROR] view type must be home"]}
        )
    prev = fake._home.get(user_id)
    if prev and p.get("hash") and p["hash"] != prev["hash"]:
        return _err("hash_conflict")
    view_id = prev["id"] if prev else f"V{next(fake._ids):010d}"
    obj = _view_obj(fake, view, view_id)
    fake._home[user_id] = obj
    return {"ok": True, "view": copy.deepcopy(obj)}


def _usergroups_users_list(fake: SlackFake, p: dict[str, Any]) -> dict[str, Any]:
    group = p.get("usergroup")
    if not group:
        return _err("invalid_arguments")
    if group not in fake.usergroups:
        return _err("no_such_subteam")
    return {"ok": True, "users": list(fake.usergroups[group])}


def _users_info(fake: SlackFake, p: dict[str, Any]) -> dict[str, Any]:
    user = p.get("user")
    if not user or user not in fake.users:
        return _err("user_not_found")
    return {"ok": True, "user": fake._user_obj(user)}


def _users_lookup_by_email(fake: SlackFake, p: dict[str, Any]) -> dict[str, Any]:
    email = (p.get("email") or "").lower()
    for uid in fake.users:
        user = fake._user_obj(uid)
        if email and str(user["profile"].get("email", "")).lower() == email:
            return {"ok": True, "user": user}
    return _err("users_not_found")


def _conversations_open(fake: SlackFake, p: dict[str, Any]) -> dict[str, Any]:
    if p.get("channel"):
        return {"ok": True, "channel": {"id": p["channel"]}}
    users = p.get("users")
    if isinstance(users, str):
        users = [u.strip() for u in users.split(",") if u.strip()]
    if not users:
        return _err("users_list_not_supplied")
    if len(users) == 1:
        return {
            "ok": True,
            "no_op": False,
            "already_open": False,
            "channel": {"id": fake.dm_channel(users[0])},
        }
    key = ",".join(sorted(users))
    return {"ok": True, "channel": {"id": "G" + fake.dm_channel(key)[1:]}}


_API: dict[str, Callable[[SlackFake, dict[str, Any]], dict[str, Any] | _Reply]] = {
    "auth.test": _auth_test,
    "chat.postMessage": _chat_post_message,
    "chat.update": _chat_update,
    "chat.postEphemeral": _chat_post_ephemeral,
    "chat.delete": _chat_delete,
    "views.open": _views_open,
    "views.update": _views_update,
    "views.publish": _views_publish,
    "usergroups.users.list": _usergroups_users_list,
    "users.info": _users_info,
    "users.lookupByEmail": _users_lookup_by_email,
    "conversations.open": _conversations_open,
    "conversations.history": _conversations_history,
}


# --------------------------------------------------------------------------- HTTP layer


class _Handler(BaseHTTPRequestHandler):
    owner: SlackFake
    server_version = "slackfake/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        url = urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if len(parts) != 2 or parts[0] not in ("api", "response"):
            self._send(_Reply(404, {"ok": False, "error": "not_found"}))
            return
        kind = "api" if parts[0] == "api" else "response"
        headers = dict(self.headers.items())
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            params = _parse_params(url.query, raw, self.headers.get("Content-Type", ""))
        except ValueError as e:
            self._send(
                _Reply(
                    200,
                    {
                        "ok": False,
                        "error": "invalid_json" if kind == "api" else "invalid_payload",
                        "detail": str(e),
                    },
                )
            )
            return
        self._send(self.owner._handle(kind, parts[1], params, headers))

    def _send(self, reply: _Reply) -> None:
        if isinstance(reply.body, str):
            data, ctype = reply.body.encode(), "text/plain; charset=utf-8"
        else:
            data, ctype = json.dumps(reply.body).encode(), "application/json; charset=utf-8"
        self.send_response(reply.status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for k, v in reply.headers.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


def _parse_params(query: str, raw: bytes, content_type: str) -> dict[str, Any]:
    params: dict[str, Any] = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    ctype = content_type.split(";")[0].strip().lower()
    if raw:
        if ctype == JSON:
            try:
                body = json.loads(raw)
            except json.JSONDecodeError as e:
                raise ValueError(str(e)) from e
            if not isinstance(body, dict):
                raise ValueError("JSON body must be an object")
            params.update(body)
        else:
            form = parse_qs(raw.decode("utf-8"), keep_blank_values=True)
            params.update({k: v[-1] for k, v in form.items()})
            for k in _JSON_FIELDS:  # WebClient form bodies carry these as JSON strings
                v = params.get(k)
                if isinstance(v, str) and v[:1] in "[{":
                    try:
                        params[k] = json.loads(v)
                    except json.JSONDecodeError:
                        pass
    return params


# --------------------------------------------------------------------------- Slack -> bot


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


def signed(
    secret: str | bytes, built: Body, timestamp: int | None = None
) -> tuple[bytes, dict[str, str]]:
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


# --------------------------------------------------------------------------- Socket Mode


class SocketModeServer:
    """Slack's side of Socket Mode, on a local stdlib WebSocket server (RFC 6455).

    Started with :meth:`SlackFake.socket_mode`. ``apps.connections.open`` (called with the
    app-level ``xapp-`` token) hands out ``ws://127.0.0.1:PORT/link/?ticket=…`` URLs; each
    connection gets Slack's ``hello``, answers pings, and records the app's acks
    (``{"envelope_id", "payload"?}``). Envelopes go round-robin over open connections, as
    Slack spreads them over an app's sockets::

        sm = fake.socket_mode("xapp-test")
        ...                                   # the app connects
        sm.wait_connected()
        eid = sm.send_built(block_action("jit_approve", rid, "U1", message_ts=ts))
        ack = sm.wait_ack(eid)                # {"envelope_id": eid} (+ "payload")
    """

    GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, fake: SlackFake, app_token: str) -> None:
        import socketserver

        self.fake = fake
        self.app_token = app_token
        self._cond = threading.Condition()
        self._conns: list[_WsConn] = []
        self._acks: dict[str, list[dict[str, Any]]] = {}
        self._sent: list[dict[str, Any]] = []
        self._tickets: set[str] = set()
        self._rr = itertools.count()
        self.connections_opened = 0  # successful WebSocket handshakes
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                server._serve(self.request)

        class TCP(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._tcp = TCP(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._tcp.serve_forever, name="slackfake-ws", kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    # ---- Slack's Web API side ---------------------------------------------------

    def _open(self, headers: dict[str, str]) -> _Reply:
        token = _bearer(headers)
        if not token:
            return _Reply(200, _err("not_authed"))
        if not token.startswith("xapp-"):
            return _Reply(200, _err("not_allowed_token_type"))
        if not hmac.compare_digest(token, self.app_token):
            return _Reply(200, _err("invalid_auth"))
        ticket = secrets.token_hex(16)
        with self._cond:
            self._tickets.add(ticket)
        host, port = self._tcp.server_address[:2]
        return _Reply(200, {"ok": True, "url": f"ws://{host}:{port}/link/?ticket={ticket}&app_id={self.fake.app_id}"})

    # ---- test API -----------------------------------------------------------------

    def connected(self) -> int:
        """How many WebSocket connections are open now."""
        with self._cond:
            return sum(1 for c in self._conns if c.open)

    def wait_connected(self, n: int = 1, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(1 for c in self._conns if c.open) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"fewer than {n} Socket Mode connection(s) after {timeout}s")
                self._cond.wait(left)

    def send(
        self,
        type_: str,
        payload: dict[str, Any],
        *,
        accepts_response_payload: bool | None = None,
        envelope_id: str | None = None,
        retry_attempt: int | None = None,
    ) -> str:
        """Push one envelope to the next open connection; returns its ``envelope_id``."""
        eid = envelope_id or f"{secrets.token_hex(4)}-{secrets.token_hex(2)}-{secrets.token_hex(6)}"
        if accepts_response_payload is None:
            accepts_response_payload = type_ == "slash_commands" or (
                type_ == "interactive" and payload.get("type") == "view_submission"
            )
        env: dict[str, Any] = {
            "envelope_id": eid,
            "payload": payload,
            "type": type_,
            "accepts_response_payload": accepts_response_payload,
        }
        if type_ == "events_api":
            env["retry_attempt"] = retry_attempt or 0
            env["retry_reason"] = "timeout" if retry_attempt else ""
        with self._cond:
            open_conns = [c for c in self._conns if c.open]
            if not open_conns:
                raise AssertionError("no open Socket Mode connection")
            conn = open_conns[next(self._rr) % len(open_conns)]
            self._sent.append(copy.deepcopy(env))
        conn.send_text(json.dumps(env))
        return eid

    def send_built(self, built: Body, **kw: Any) -> str:
        """Send what a builder above made for HTTP (``block_action(...)``, ``slash_command(...)``,
        ``view_submission(...)``, ``event_callback(...)``) as the matching envelope."""
        type_, payload = envelope_payload(built)
        return self.send(type_, payload, **kw)

    def wait_ack(self, envelope_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The app's (first) ack for an envelope."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._acks.get(envelope_id):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no ack for envelope {envelope_id} within {timeout}s")
                self._cond.wait(left)
            return copy.deepcopy(self._acks[envelope_id][0])

    def acks(self, envelope_id: str) -> list[dict[str, Any]]:
        with self._cond:
            return copy.deepcopy(self._acks.get(envelope_id, []))

    def sent(self) -> list[dict[str, Any]]:
        with self._cond:
            return copy.deepcopy(self._sent)

    def disconnect_all(self) -> None:
        """Close every connection (as Slack does on deploys); the app should reconnect."""
        with self._cond:
            conns = list(self._conns)
        for c in conns:
            c.close()

    def stop(self) -> None:
        self.disconnect_all()
        self._tcp.shutdown()
        self._tcp.server_close()
        self._thread.join(timeout=5)

    # ---- WebSocket server ---------------------------------------------------------

    def _serve(self, sock: Any) -> None:
        import base64
        import socket as socketlib

        sock.setsockopt(socketlib.IPPROTO_TCP, socketlib.TCP_NODELAY, 1)
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = sock.recv(4096)
            if not chunk:
                return
            raw += chunk
            if len(raw) > 65536:
                return
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else ""
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        ticket = parse_qs(urlsplit(path).query).get("ticket", [""])[0]
        with self._cond:
            valid = ticket in self._tickets
            self._tickets.discard(ticket)  # one connection per ticket, as Slack's URLs
        key = hdrs.get("sec-websocket-key", "")
        if not valid or hdrs.get("upgrade", "").lower() != "websocket" or not key:
            sock.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        accept = base64.b64encode(hashlib.sha1((key + self.GUID).encode()).digest()).decode()
        sock.sendall(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )
        conn = _WsConn(sock, rest)
        with self._cond:
            self._conns.append(conn)
            self.connections_opened += 1
            self._cond.notify_all()
        hello = {
            "type": "hello",
            "num_connections": self.connected(),
            "debug_info": {"host": "slackfake", "build_number": 1, "approximate_connection_time": 3600},
            "connection_info": {"app_id": self.fake.app_id},
        }
        try:
            conn.send_text(json.dumps(hello))
            while conn.open:
                frame = conn.read_frame()
                if frame is None:
                    break
                opcode, data = frame
                if opcode == 0x9:  # ping -> pong with the same payload
                    conn.send_frame(0xA, data)
                elif opcode == 0x8:
                    conn.send_frame(0x8, data[:2])
                    break
                elif opcode == 0x1:
                    try:
                        ack = json.loads(data.decode("utf-8"))
                    except ValueError:
                        continue
                    if isinstance(ack, dict) and ack.get("envelope_id"):
                        with self._cond:
                            self._acks.setdefault(str(ack["envelope_id"]), []).append(ack)
                            self._cond.notify_all()
        except OSError:
            pass
        finally:
            conn.close()
            with self._cond:
                self._cond.notify_all()


class _WsConn:
    """One server-side WebSocket: unmasked frames out, masked frames in."""

    def __init__(self, sock: Any, buffered: bytes = b"") -> None:
        self.sock = sock
        self.buf = buffered
        self.open = True
        self._send_lock = threading.Lock()

    def _read(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return None
            if not chunk:
                return None
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self) -> tuple[int, bytes] | None:
        """One whole message (continuation frames joined): (opcode, payload)."""
        import struct

        opcode, message = None, b""
        while True:
            head = self._read(2)
            if head is None:
                return None
            fin, op = head[0] & 0x80, head[0] & 0x0F
            masked, length = head[1] & 0x80, head[1] & 0x7F
            if length == 126:
                ext = self._read(2)
                if ext is None:
                    return None
                length = struct.unpack("!H", ext)[0]
            elif length == 127:
                ext = self._read(8)
                if ext is None:
                    return None
                length = struct.unpack("!Q", ext)[0]
            mask = self._read(4) if masked else b"\0\0\0\0"
            data = self._read(length) if length else b""
            if mask is None or data is None:
                return None
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            if op >= 0x8:  # control frames may arrive between fragments
                return op, data
            if op != 0:
                opcode = op
            message += data
            if fin:
                return opcode or 0x1, message

    def send_frame(self, opcode: int, data: bytes) -> None:
        import struct

        n = len(data)
        if n < 126:
            head = bytes([0x80 | opcode, n])
        elif n < 65536:
            head = bytes([0x80 | opcode, 126]) + struct.pack("!H", n)
        else:
            head = bytes([0x80 | opcode, 127]) + struct.pack("!Q", n)
        with self._send_lock:
            if not self.open:
                raise OSError("connection closed")
            self.sock.sendall(head + data)

    def send_text(self, text: str) -> None:
        self.send_frame(0x1, text.encode("utf-8"))

    def close(self) -> None:
        with self._send_lock:
            if not self.open:
                return
            self.open = False
            try:
                self.sock.sendall(bytes([0x88, 2]) + (1001).to_bytes(2, "big"))
            except OSError:
                pass
            try:
                self.sock.close()
            except OSError:
                pass


def envelope_payload(built: Body) -> tuple[str, dict[str, Any]]:
    """(envelope type, payload) for what a builder above made for HTTP: Socket Mode carries
    the same content as JSON (interactions: the ``payload`` object; slash commands: the form
    fields; Events API: the ``event_callback`` body)."""
    body, ctype = built
    if ctype == JSON:
        return "events_api", json.loads(body)
    form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8"), keep_blank_values=True).items()}
    if "payload" in form:
        return "interactive", json.loads(form["payload"])
    return "slash_commands", form

__all__ += ["SocketModeServer", "envelope_payload"]
