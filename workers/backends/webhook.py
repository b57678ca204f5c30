"""`webhook`: delegate grant and revoke to your own HTTPS endpoint.

Policy example::

    grant:
      type: webhook
      url: https://vault-bridge.internal/jit
      secret_env: JIT_WEBHOOK_SECRET     # env var with the shared HMAC secret
      timeout: 10                        # seconds for the whole call (connect, send, answer)
      retries: 3                         # immediate re-tries of failed *connections* only

What jit sends (``POST``, ``Content-Type: application/json``)::

    {"event": "grant",  "request": {...GrantRequest.as_json()...}}
    {"event": "revoke", "request": {...}, "credential": {...}}   # credential only if known

with headers

* ``X-Jit-Event``: ``grant`` or ``revoke``
* ``X-Jit-Request-Id``: the request id — the same for every retry, so make your endpoint
  idempotent on (event, request id): a second ``grant`` must not create a second identity,
  a ``revoke`` of something unknown or already removed must answer 2xx.
* ``X-Jit-Request-Timestamp``: unix seconds
* ``X-Jit-Signature``: ``v0=`` + hex HMAC-SHA256(secret, ``"v0:{timestamp}:{raw body}"``),
  the same scheme as Slack's request signing.

Verify on the receiving side with :func:`verify_signature` over the *raw* body bytes (never
a re-serialised body) and reject anything older than 5 minutes::

    from workers.backends.webhook import verify_signature

    ok = verify_signature(secret, headers["X-Jit-Request-Timestamp"], raw_body,
                          headers["X-Jit-Signature"])

A ``grant`` must answer 2xx with a JSON object of at most 64 KiB: that object *is* the
credential handed to the pipeline (and passed back as ``"credential"`` on revoke). ``revoke``
needs any 2xx; if its body is a JSON object of at most 64 KiB, jit keeps it (scrubbed of the
credential's values) as the session summary — what your endpoint saw of the credential's use.
A body that cannot be read or parsed is ignored: the 2xx alone completes the revoke. Everything
else — another status (redirects are not followed), a timeout, a connection failure, a grant
body over 64 KiB or not a JSON object — is a GrantError naming the status only (never the
body); the job layer retries with backoff and the same request id.

``timeout`` bounds the whole call: connecting (and its retries), sending, and reading the
status line, headers and body: every wait on the socket is bounded by the time left, so a
receiver that dribbles bytes cannot hold a worker longer than ``timeout``. Not covered: name
resolution, and a host name with several addresses gets the time left once per address. Each call
makes ONE request: there is no backoff inside a call (the job layer owns retries). ``retries``
only re-tries, immediately and within the same ``timeout``, a *connection* that could not be
established (the request never reached your endpoint, so this is always safe); a timeout or 5xx
is never re-sent within the call, since your endpoint may already have acted.

``url`` must be ``https://`` (certificates are verified against the system's trust store, host
names checked; no proxy from the environment is used); plain ``http://`` is accepted
only for loopback hosts (``127.0.0.0/8``, ``::1``, ``localhost``), for tests.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import http.client
import io
import json
import re
import socket
import ssl
import time
from typing import Any
from urllib.parse import SplitResult, urlsplit

from pydantic import Field, field_validator

from bot.core.net import is_loopback
from bot.core.usage import secret_values
from workers.backends import session_summary
from workers.backends.base import (
    BackendConfig,
    GrantBackend,
    GrantError,
    GrantRequest,
    register,
)

SIGNATURE_VERSION = "v0"
#: A grant answer is a credential, not a download: anything longer is refused unread.
MAX_RESPONSE_BYTES = 64 * 1024
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """Certificates verified against the system's trust store, host names checked."""
    return ssl.create_default_context()


class _Deadline:
    """One deadline for a whole call."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left; TimeoutError once there are none (a 0 timeout would not block)."""
        left = self.at - time.monotonic()
        if left <= 0:
            raise TimeoutError("the call's deadline passed")
        return left


class _DeadlineSocket:
    """The part of a connected socket http.client uses (`sendall`, `makefile`, `close`), with
    every wait bounded by the time left until one deadline. A per-read timeout alone restarts
    on each byte, so a receiver dribbling one byte at a time could hold a worker for ever."""

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        self._sock, self._deadline = sock, deadline

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(self._deadline.left())  # bounds the whole sendall (Python 3.5+)
        self._sock.sendall(data)

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BufferedReader:
        if mode != "rb":
            raise ValueError(f"unsupported mode {mode!r}")
        # The socket's own (unbuffered) file keeps the socket open until the response is read,
        # as http.client expects when it closes the connection of a `Connection: close` answer.
        raw = self._sock.makefile("rb", buffering=0)
        return io.BufferedReader(_DeadlineReader(raw, self._sock, self._deadline))

    def close(self) -> None:
        self._sock.close()


class _DeadlineReader(io.RawIOBase):
    def __init__(self, raw: Any, sock: socket.socket, deadline: _Deadline) -> None:
        self._raw, self._sock, self._deadline = raw, sock, deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        self._sock.settimeout(self._deadline.left())
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def sign(secret: str | bytes, timestamp: int | str, body: bytes | str) -> str:
    """`v0=<hex HMAC-SHA256 of "v0:{timestamp}:{body}">` for `X-Jit-Signature`."""
    base = f"{SIGNATURE_VERSION}:{timestamp}:".encode() + _as_bytes(body)
    digest = hmac.new(_as_bytes(secret), base, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_VERSION}={digest}"


def verify_signature(
    secret: str | bytes,
    timestamp: int | str | None,
    body: bytes | str,
    signature: str | None,
    tolerance: int = 300,
    *,
    now: float | None = None,
) -> bool:
    """True if `signature` (the `X-Jit-Signature` header) signs `body` at `timestamp`.

    For webhook receivers. `timestamp` is the `X-Jit-Request-Timestamp` header and `body`
    the raw request body exactly as received. False if the timestamp is missing, not an
    integer or more than `tolerance` seconds away from now (replay protection), or the
    signature does not match (compared in constant time). `now` is for tests.
    """
    if not timestamp or not signature or not secret:
        return False
    try:
        ts = int(str(timestamp).strip())
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance:
        return False
    expected = sign(secret, ts, body)
    return hmac.compare_digest(expected.encode(), str(signature).strip().encode())


@register
class WebhookBackend(GrantBackend):
    type = "webhook"
    enforces_expiry = False

    class Config(BackendConfig):
        url: str
        secret_env: str
        timeout: float = Field(default=10.0, gt=0, le=300)
        retries: int = Field(default=3, ge=0, le=10)

        @field_validator("url")
        @classmethod
        def _url(cls, v: str) -> str:
            try:
                parts = urlsplit(v)
                parts.port  # noqa: B018  (raises ValueError on a bad port)
            except ValueError:
                raise ValueError("not a valid URL") from None
            if not parts.hostname:
                raise ValueError("must be an absolute URL with a host")
            if parts.username or parts.password:
                raise ValueError("must not contain credentials (use secret_env for the signing secret)")
            if parts.fragment:
                raise ValueError("must not contain a #fragment")
            if parts.scheme == "https":
                return v
            if parts.scheme == "http" and is_loopback(parts.hostname):
                return v
            raise ValueError("must use https:// (plain http:// only for 127.0.0.1/::1/localhost)")

        @field_validator("secret_env")
        @classmethod
        def _env_name(cls, v: str) -> str:
            if not _ENV_RE.match(v):
                raise ValueError("must be the name of an environment variable")
            return v

    config: Config

    def _where(self) -> str:
        # Host only in messages: a path or query string may carry a token.
        return urlsplit(self.config.url).hostname or "webhook"

    def _post(self, event: str, request: GrantRequest, payload: dict[str, Any]) -> bytes | None:
        """POST the event; the body of a 2xx answer (for `revoke`, None when it cannot be read).

        The whole call — connecting (with its retries), sending, the status line, headers and
        body — ends within `timeout`: a watchdog shuts the socket down at the deadline, so a
        receiver that dribbles bytes cannot hold the worker (a per-read timeout would not stop
        it). Name resolution is the one step it cannot cut short.
        """
        secret = self.env.environ.get(self.config.secret_env)
        if not secret:
            raise GrantError(f"environment variable {self.config.secret_env} is not set")
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "jit-webhook/1",
            "Connection": "close",
            "X-Jit-Event": event,
            "X-Jit-Request-Id": request.id,
            "X-Jit-Request-Timestamp": timestamp,
            "X-Jit-Signature": sign(secret, timestamp, body),
        }
        parts = urlsplit(self.config.url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        deadline = _Deadline(self.config.timeout)
        conn = self._connect(event, parts, deadline)
        try:
            conn.request("POST", target, body=body, headers=headers)
            response = conn.getresponse()
            if not 200 <= response.status < 300:
                raise GrantError(f"webhook {event} to {self._where()} answered HTTP {response.status}")
            if event != "grant":
                return self._revoke_body(response)  # the status alone completes a revoke
            if response.length is not None and response.length > MAX_RESPONSE_BYTES:
                raise self._too_big(event)
            data = response.read(MAX_RESPONSE_BYTES + 1)
            if len(data) > MAX_RESPONSE_BYTES:
                raise self._too_big(event)
            return data
        except TimeoutError:
            raise self._timed_out(event) from None
        except OSError:
            raise GrantError(f"webhook {event} to {self._where()}: connection failed") from None
        except http.client.HTTPException as e:
            raise GrantError(f"webhook {event} to {self._where()} failed: {type(e).__name__}") from None
        finally:
            conn.close()

    def _connect(self, event: str, parts: SplitResult, deadline: _Deadline) -> http.client.HTTPConnection:
        """A connected socket, re-trying (at once) connections that could not be established:
        the request never reached the receiver, so that is always safe."""
        host, port = parts.hostname or "", parts.port
        for attempt in range(self.config.retries + 1):
            try:
                # The socket's timeout bounds the TCP connect and, as one deadline, the TLS
                # handshake; then every later wait is bounded by _DeadlineSocket.
                if parts.scheme == "https":
                    conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                        host, port, timeout=deadline.left(), context=_tls_context()
                    )
                else:
                    conn = http.client.HTTPConnection(host, port, timeout=deadline.left())
                conn.connect()
            except TimeoutError:
                raise self._timed_out(event) from None
            except ssl.SSLError:
                raise GrantError(f"webhook {event} to {self._where()}: TLS verification failed") from None
            except OSError:
                if attempt == self.config.retries:
                    raise GrantError(f"webhook {event} to {self._where()}: connection failed") from None
                continue
            conn.sock = _DeadlineSocket(conn.sock, deadline)
            return conn
        raise AssertionError("unreachable")  # the loop returns or raises

    @staticmethod
    def _revoke_body(response: http.client.HTTPResponse) -> bytes | None:
        """A revoke answer's body, if it can be read within the call's deadline and cap."""
        if response.length is not None and response.length > MAX_RESPONSE_BYTES:
            return None
        try:
            data = response.read(MAX_RESPONSE_BYTES + 1)
        except (TimeoutError, OSError, http.client.HTTPException):
            return None
        return data if len(data) <= MAX_RESPONSE_BYTES else None

    def _timed_out(self, event: str) -> GrantError:
        return GrantError(f"webhook {event} to {self._where()} timed out after {self.config.timeout:g}s")

    def _too_big(self, event: str) -> GrantError:
        return GrantError(
            f"webhook {event} to {self._where()} answered with more than {MAX_RESPONSE_BYTES // 1024} KiB"
        )

    def grant(self, request: GrantRequest) -> dict[str, Any]:
        data = self._post("grant", request, {"event": "grant", "request": request.as_json()})
        try:
            credential = json.loads(data or b"")
        except ValueError:
            raise GrantError(f"webhook grant to {self._where()} answered without a JSON body") from None
        if not isinstance(credential, dict):
            raise GrantError(
                f"webhook grant to {self._where()} answered with a JSON {type(credential).__name__}, not an object"
            )
        return credential

    def revoke(self, request: GrantRequest, credential: dict[str, Any] | None) -> dict[str, Any] | None:
        payload: dict[str, Any] = {"event": "revoke", "request": request.as_json()}
        if credential is not None:
            payload["credential"] = credential
        body = self._post("revoke", request, payload)
        return session_summary.from_output(
            body, [*secret_values(credential), self.env.environ.get(self.config.secret_env)]
        )
