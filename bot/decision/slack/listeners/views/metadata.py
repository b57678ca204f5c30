"""What a modal carries between its opening and its submission (never trusted as a fact)."""

from __future__ import annotations

import json


def request_id(view: dict) -> str:
    """The request id the modal was opened for (checked against the store when used)."""
    try:
        meta = json.loads(view.get("private_metadata") or "{}")
    except ValueError:
        return ""
    return str(meta.get("id", "")) if isinstance(meta, dict) else ""


def field(view: dict, block: str, action: str) -> str:
    values = (view.get("state") or {}).get("values") or {}
    return ((values.get(block) or {}).get(action) or {}).get("value") or ""
