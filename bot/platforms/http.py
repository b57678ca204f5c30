"""Calling a CI platform's REST API: JSON in and out, bounded in time and size, no redirects followed."""

from __future__ import annotations

import json
from typing import Any

import requests
import urllib3

#: A platform's answer larger than this is refused (a workflow run or a deployment is a few KiB).
MAX_RESPONSE_BYTES = 1024 * 1024
#: Seconds to connect, and to wait for each read.
TIMEOUT = (3.05, 10.0)


class ApiError(Exception):
    """The platform did not take the call. `status` is its HTTP status, 0 when no answer came;
    `maybe_sent`: the call may have reached it all the same (the answer was lost)."""

    def __init__(self, status: int, message: str, *, maybe_sent: bool = False) -> None:
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status = status
        self.message = message
        self.maybe_sent = maybe_sent

    @property
    def permanent(self) -> bool:
        """A refusal that the same call will meet again (a 4xx other than auth, conflicts of
        timing and rate limits); everything else is worth retrying."""
        if not 400 <= self.status < 500:
            return False
        if self.status in (401, 408, 429):
            return False
        return not (self.status == 403 and "rate limit" in self.message.lower())


def call(
    session: requests.Session,
    method: str,
    url: str,
    *,
    headers: dict[str, str],
    body: dict[str, Any] | None = None,
    timeout: tuple[float, float] = TIMEOUT,
) -> Any:
    """The JSON answer of a 2xx (None when empty), else ApiError."""
    try:
        resp = session.request(
            method, url, headers=headers, json=body, timeout=timeout, allow_redirects=False, stream=True
        )
    except (requests.ConnectionError, requests.Timeout) as e:
        # no connection: nothing was sent; a reset or a read timeout may have come after the call
        raise ApiError(0, f"cannot reach {_host(url)}: {type(e).__name__}", maybe_sent=not _unconnected(e)) from None
    except requests.RequestException as e:
        raise ApiError(0, f"calling {_host(url)} failed: {type(e).__name__}") from None
    try:
        raw = resp.raw.read(MAX_RESPONSE_BYTES + 1, decode_content=True)
    except Exception:  # noqa: BLE001 - a body cut short is an answer we cannot read
        raw = b""
    finally:
        resp.close()
    if len(raw) > MAX_RESPONSE_BYTES:
        raise ApiError(resp.status_code, "the answer is too large")
    data: Any = None
    if raw.strip():
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
    if not 200 <= resp.status_code < 300:
        message = data.get("message") or data.get("error") if isinstance(data, dict) else None
        raise ApiError(resp.status_code, str(message or resp.reason or "error")[:200])
    return data


def _unconnected(e: Exception) -> bool:
    if isinstance(e, requests.ConnectTimeout):
        return True
    reason = getattr(e.args[0], "reason", None) if e.args else None
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


def _host(url: str) -> str:
    return requests.utils.urlparse(url).netloc or url
