"""Hosts and URLs jit will talk to: https, or plain http to this machine only (tests, local issuers)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, what: str) -> str:
    """https, or http to a loopback host (local issuers and tests); no query or fragment."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise ValueError(f"{what} must be an absolute URL")
    if parts.scheme == "http":
        if not is_loopback(parts.hostname):
            raise ValueError(f"{what} must use https (http is allowed only for 127.0.0.1, ::1 or localhost)")
    elif parts.scheme != "https":
        raise ValueError(f"{what} must use https")
    if parts.query or parts.fragment:
        raise ValueError(f"{what} must not have a query or fragment")
    return url
