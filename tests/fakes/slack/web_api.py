"""The Web API and ``response_url`` server: recorded calls, message state, faults, rate limits."""

from __future__ import annotations

import copy
import hmac
import itertools
import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .socket_mode import SocketModeServer
from .web_api_methods import METHODS
from .wire import (
    APP_ID,
    BOT_ID,
    BOT_USER_ID,
    JSON,
    TEAM_DOMAIN,
    TEAM_ID,
    Reply,
    bearer_token,
    truthy,
)

# Form fields that WebClient sends as JSON-encoded strings when it uses a form body.
_JSON_FIELDS = ("blocks", "attachments", "view", "metadata")
_SECRET_PARAMS = ("token", "client_secret")


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
        return self.status == 200 and isinstance(self.response, dict) and bool(self.response.get("ok"))

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
            raise RuntimeError("SlackFake is not started (use `with SlackFake() as fake:` or .start())")
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
                ts: copy.deepcopy(m) for ts, m in self._messages.items() if channel is None or m["channel"] == channel
            }

    def message(self, ts: str) -> dict[str, Any]:
        """One current message by ts (KeyError if none)."""
        with self._lock:
            return copy.deepcopy(self._messages[ts])

    def ephemerals(self, channel: str | None = None, user: str | None = None) -> list[dict[str, Any]]:
        """Ephemeral messages sent with ``chat.postEphemeral``."""
        with self._lock:
            return [
                copy.deepcopy(m)
                for m in self._ephemerals
                if (channel is None or m["channel"] == channel) and (user is None or m["user"] == user)
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

    def response_url(self, key: str, *, channel: str | None = None, message_ts: str | None = None) -> str:
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

    def slow(self, seconds: float, methods: str | Iterable[str] | None = None, times: int | None = None) -> None:
        """Delay matching requests by ``seconds`` before answering."""
        self._add(_Fault("slow", _methods(methods), times, seconds=seconds))

    def api_error(self, error: str, methods: str | Iterable[str] | None = None, times: int | None = None) -> None:
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

    def _handle(self, kind: str, name: str, params: dict[str, Any], headers: dict[str, str]) -> Reply:
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
    ) -> Reply:
        if fault is not None:
            if fault.kind == "ratelimit":
                return Reply(
                    429,
                    {"ok": False, "error": "ratelimited"},
                    {"Retry-After": str(fault.retry_after)},
                )
            if fault.kind == "fail":
                body = fault.body if fault.body is not None else {"ok": False, "error": "internal_error"}
                return Reply(fault.status, body)
            if fault.kind == "error":
                return Reply(200, {"ok": False, "error": fault.error})
        if kind == "response":
            return self._response_post(name, params)

        if name == "apps.connections.open" and getattr(self, "_socket_mode", None) is not None:
            return self._socket_mode._open(headers)  # app-level token, not the bot token
        token = bearer_token(headers) or params.get("token")
        if not token:
            return Reply(200, {"ok": False, "error": "not_authed"})
        if self.token is not None and not hmac.compare_digest(str(token), self.token):
            return Reply(200, {"ok": False, "error": "invalid_auth"})

        handler = METHODS.get(name)
        if handler is None:
            return Reply(200, {"ok": False, "error": "unknown_method", "req_method": name})
        result = handler(self, params)
        if isinstance(result, Reply):
            return result
        return Reply(200, result)

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
        if self.channels is not None and channel not in self.channels and channel not in self._dms.values():
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

    def _response_post(self, key: str, params: dict[str, Any]) -> Reply:
        self._responses.setdefault(key, []).append(copy.deepcopy(params))
        binding = self._response_bindings.get(key)
        if binding:
            channel, ts = binding
            msg = self._messages.get(ts)
            if msg is not None and msg["channel"] == channel:
                if truthy(params.get("delete_original")):
                    self._deleted[ts] = self._messages.pop(ts)
                elif truthy(params.get("replace_original")):
                    self._apply_update(msg, params)
        return Reply(200, {"ok": True})

    def _apply_update(self, msg: dict[str, Any], params: dict[str, Any]) -> None:
        if "text" in params:
            msg["text"] = params["text"]
        for k in ("blocks", "attachments", "metadata"):
            if k in params:
                msg[k] = copy.deepcopy(params[k])
        msg["edited"] += 1
        msg["edited_ts"] = self._next_ts()


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
            self._send(Reply(404, {"ok": False, "error": "not_found"}))
            return
        kind = "api" if parts[0] == "api" else "response"
        headers = dict(self.headers.items())
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            params = _parse_params(url.query, raw, self.headers.get("Content-Type", ""))
        except ValueError as e:
            self._send(
                Reply(
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

    def _send(self, reply: Reply) -> None:
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
