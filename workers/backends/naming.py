"""Names of temporary identities (roles, users), derived from the request so retries find them."""

from __future__ import annotations

import re
import string

FIELDS = {"action", "pipeline", "id8", "id"}


def slug(value: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", value.lower())


def template_fields(template: str) -> set[str]:
    """The fields a `username_template` uses; unknown fields and format specs are errors."""
    fields: set[str] = set()
    for _literal, name, spec, conv in string.Formatter().parse(template):
        if name is None:
            continue
        if name not in FIELDS:
            raise ValueError(f"unknown field {{{name}}} (use {', '.join(sorted(FIELDS))})")
        if spec or conv:
            raise ValueError(f"field {{{name}}} takes no format spec or conversion")
        fields.add(name)
    return fields


def render_name(template: str, *, action: str, pipeline: str, request_id: str, max_len: int) -> str:
    """Fill the template; shorten `action`/`pipeline` (longest first) until it fits `max_len` bytes."""
    values = {
        "action": slug(action),
        "pipeline": slug(pipeline),
        "id8": slug(request_id[:8]),
        "id": slug(request_id),
    }
    shrinkable = [k for k in ("action", "pipeline") if f"{{{k}}}" in template]
    name = template.format(**values)
    while len(name.encode()) > max_len:
        candidates = [k for k in shrinkable if values[k]]
        if not candidates:
            break
        longest = max(candidates, key=lambda k: len(values[k]))
        values[longest] = values[longest][:-1]
        name = template.format(**values)
    return name
