"""Backend error messages made safe to show: secrets and connection strings out, first line only."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

Rules = Iterable[tuple[re.Pattern[str], str]]


def scrub(text: str, secrets: Iterable[str | None], rules: Rules = ()) -> str:
    """`text` without any of `secrets` (nor their URL-quoted forms), each rule's pattern replaced."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***").replace(quote(secret, safe=""), "***")
    for pattern, replacement in rules:
        text = pattern.sub(replacement, text)
    return text


def redact(message: str, secrets: Iterable[str | None], rules: Rules = ()) -> str:
    """`message` without any of `secrets` (nor their URL-quoted forms) and with each rule's pattern
    replaced, cut to its first line. Empty when nothing is left."""
    message = scrub(message, list(secrets), rules).strip()
    return message.splitlines()[0] if message else ""


#: Keys whose values are dropped from JSON a backend hands back (as from the audit trail).
SECRET_KEYS = frozenset({"credential", "token", "request_token", "password", "secret", "dsn", "authorization"})


def redact_json(value: Any, secrets: Iterable[str | None], rules: Rules = ()) -> Any:
    """A JSON value with every string scrubbed (`scrub`) and secret-named keys dropped, at any depth."""
    keep = [s for s in secrets if s]
    if isinstance(value, dict):
        return {
            scrub(str(k), keep, rules): redact_json(v, keep, rules)
            for k, v in value.items()
            if str(k).lower() not in SECRET_KEYS
        }
    if isinstance(value, list):
        return [redact_json(v, keep, rules) for v in value]
    if isinstance(value, str):
        return scrub(value, keep, rules)
    return value
