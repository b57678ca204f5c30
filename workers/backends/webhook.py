"""`webhook`: delegate grant and revoke to your own HTTPS endpoint.

Policy example::

    grant:
      type: webhook
      url: https://vault-bridge.internal/jit
      secret_env: JIT_WEBHOOK_SECRET     # env var with the shared HMAC secret
      timeout: 10                        # seconds, per request (connect and read)
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

A ``grant`` must answer 2xx with a JSON object: that object *is* the credential handed to
the pipeline (and passed back as ``"credential"`` on revoke). ``revoke`` needs any 2xx.
Everything else — another status (redirects are not followed), a timeout, a connection
failure, a grant body that is not a JSON object — is a GrantError naming the status only
(never the body); the job layer retries with backoff and the same request id.

Each call makes ONE request: there is no backoff inside a call (the job layer owns retries).
``retries`` only re-tries, immediately, a *connection* that could not be established (the
request never reached your endpoint, so this is always safe; a connect timeout counts, so
one call can take up to (retries + 1) x timeout); a read timeout or 5xx is never re-sent
within the call, since your endpoint may already have acted.

``url`` must be ``https://`` (TLS certificates are verified); plain ``http://`` is accepted
only for loopback hosts (``127.0.0.0/8``, ``::1``, ``localhost``), for tests.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import re
import time
from typing import Any
from urllib.parse import urlsplit

import requests
from pydantic import Field, field_validator
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from workers.backends.base import (
    BackendConfig,
    GrantBackend,
    GrantError,
    GrantRequest,
    register,
)

SIGNATURE_VERSION = "v0"
_ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


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


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
                raise ValueError(
                    "must not contain credentials (use secret_env for the signing secret)"
                )
            if parts.fragment:
                raise ValueError("must not contain a #fragment")
            if parts.scheme == "https":
                return v
            if parts.scheme == "http" and _is_loopback(parts.hostname):
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

    def _post(
        self, event: str, request: GrantRequest, payload: dict[str, Any]
    ) -> requests.Response:
        secret = self.env.environ.get(self.config.secret_env)
        if not secret:
            raise GrantError(f"environment variable {self.config.secret_env} is not set")
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True, default=str).encode()
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "jit-webhook/1",
            "X-Jit-Event": event,
            "X-Jit-Request-Id": request.id,
            "X-Jit-Request-Timestamp": timestamp,
            "X-Jit-Signature": sign(secret, timestamp, body),
        }
        retry = Retry(
            total=None,
            connect=self.config.retries,
            read=False,  # never re-send once the request may have reached the receiver
            status=0,
            other=0,
            redirect=0,
            backoff_factor=0,
            raise_on_status=False,
            raise_on_redirect=False,
        )
        with requests.Session() as session:
            session.trust_env = False  # no proxies or .netrc credentials from the environment
            session.mount("https://", HTTPAdapter(max_retries=retry))
            session.mount("http://", HTTPAdapter(max_retries=retry))
            try:
                return session.post(
                    self.config.url,
                    data=body,
                    headers=headers,
                    timeout=self.config.timeout,
                    verify=True,
                    allow_redirects=False,
                )
            except requests.Timeout:
                raise GrantError(
                    f"webhook {event} to {self._where()} timed out after {self.config.timeout:g}s"
                ) from None
            except requests.exceptions.SSLError:
                raise GrantError(
                    f"webhook {event} to {self._where()}: TLS verification failed"
                ) from None
            except requests.ConnectionError:
                raise GrantError(f"webhook {event} to {self._where()}: connection failed") from None
            except requests.RequestException as e:
                raise GrantError(
                    f"webhook {event} to {self._where()} failed: {type(e).__name__}"
                ) from None

    def _check_status(self, event: str, response: requests.Response) -> None:
        if not 200 <= response.status_code < 300:
            raise GrantError(
                f"webhook {event} to {self._where()} answered HTTP {response.status_code}"
            )

    def grant(self, request: GrantRequest) -> dict[str, Any]:
        response = self._post("grant", request, {"event": "grant", "request": request.as_json()})
        self._check_status("grant", response)
        try:
            credential = response.json()
        except ValueError:
            raise GrantError(
                f"webhook grant to {self._where()} answered HTTP {response.status_code} without a JSON body"
            ) from None
        if not isinstance(credential, dict):
            raise GrantError(
                f"webhook grant to {self._where()} answered HTTP {response.status_code} "
                f"with a JSON {type(credential).__name__}, not an object"
            )
        return credential

    def revoke(self, request: GrantRequest, credential: dict[str, Any] | None) -> None:
        payload: dict[str, Any] = {"event": "revoke", "request": request.as_json()}
        if credential is not None:
            payload["credential"] = credential
        response = self._post("revoke", request, payload)
        self._check_status("revoke", response)
