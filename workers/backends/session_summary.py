"""The session summary an `exec` revoke command prints or a `webhook` revoke endpoint answers: a
JSON object, size-capped and scrubbed (workers/backends/redact.py) before jit keeps it."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from workers.backends.redact import redact_json

#: Larger output is not kept (the revoke still succeeds).
MAX_OUTPUT_BYTES = 64 * 1024


def from_output(raw: str | bytes | None, secrets: Iterable[str | None]) -> dict[str, Any] | None:
    """`{"output": <the JSON object>}` with `secrets` scrubbed from it, or None when `raw` is
    empty, larger than MAX_OUTPUT_BYTES or not one JSON object."""
    if not raw:
        return None
    data = raw.encode() if isinstance(raw, str) else raw
    if len(data) > MAX_OUTPUT_BYTES:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    if not isinstance(value, dict) or not value:
        return None
    return {"output": redact_json(value, secrets)}


def merge_summaries(
    summaries: list[dict[str, Any]], who: tuple[str, str], lists: tuple[str, ...], totals: tuple[str, ...]
) -> dict[str, Any] | None:
    """One summary for the principals one revoke removed (a template change can leave two):
    `who` = (the list's key, each summary's key naming its principal); `lists` concatenated
    (`errors` only when there are some); `totals` summed."""
    if len(summaries) <= 1:
        return summaries[0] if summaries else None
    out: dict[str, Any] = {who[0]: [s[who[1]] for s in summaries]}
    for key in (*lists, "errors"):
        items = [x for s in summaries for x in s.get(key) or []]
        if items or key != "errors":
            out[key] = items
    for key in totals:
        out[key] = sum(int(s.get(key) or 0) for s in summaries)
    return out
