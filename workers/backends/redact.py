"""Backend error messages made safe to show: secrets and connection strings out, first line only."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote

Rules = Iterable[tuple[re.Pattern[str], str]]


def redact(message: str, secrets: Iterable[str | None], rules: Rules = ()) -> str:
    """`message` without any of `secrets` (nor their URL-quoted forms) and with each rule's pattern
    replaced, cut to its first line. Empty when nothing is left."""
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***").replace(quote(secret, safe=""), "***")
    for pattern, replacement in rules:
        message = pattern.sub(replacement, message)
    message = message.strip()
    return message.splitlines()[0] if message else ""
