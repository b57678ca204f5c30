"""The body a pipeline sends to ask for access (`POST /v1/requests`), validated before anything is written."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator, model_validator

from bot.core import errors as E
from bot.core.clock import DURATION, MAX_DURATION_S
from bot.core.identity import encodable

MAX_REASON = 500
MAX_CONTEXT_VALUE = 500
#: A context key; checked by `RequestBody._context` (for its message) and published with the model.
CONTEXT_KEY = r"^[a-z][a-z0-9_]{0,39}$"
RUN_URL = r"^https?://[^\s<>|]+$"
#: The context keys CI clients send (jit_client.ci_context); any other valid key is accepted too.
CONTEXT_KEYS = ("repository", "ref", "commit", "run_url", "environment")

_CONTEXT_VALUE = {"type": "string", "maxLength": MAX_CONTEXT_VALUE}
#: What `RequestService.create` reads with `parse_duration` (after the action is known, so an
#: unknown action is still a 404): stated here, checked there.
_TTL_SCHEMA = {
    "oneOf": [
        {"type": "integer", "minimum": 1, "maximum": MAX_DURATION_S},
        {"type": "string", "pattern": DURATION.pattern},
        {"type": "null"},
    ]
}


class RequestBody(BaseModel):
    """`POST /v1/requests`: what a pipeline asks for."""

    # strict: JSON types as documented (no `"ttl": true` read as 1 s, no `"yes"` as true)
    model_config = ConfigDict(extra="forbid", strict=True, title="CreateRequest")

    action: str = Field(min_length=1, max_length=64)
    reason: str = Field(
        min_length=1,
        max_length=MAX_REASON,
        description="why the pipeline needs access; leading/trailing blanks are trimmed",
        json_schema_extra={"pattern": r"\S"},  # `_reason` checks it, with a readable message
    )
    ttl: Annotated[int | str | None, WithJsonSchema(_TTL_SCHEMA)] = Field(
        None, description="`90s`, `15m`, `2h`, `1d` or integer seconds; absent = the action's default"
    )
    requested_by: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="the person behind the run (email or CI login, mapped by the policy's `people`)",
    )
    context: dict[str, str] = Field(
        default_factory=dict,
        max_length=20,
        description="shown to approvers; overridden by verified OIDC claims",
        # `_context` checks keys and values (with readable messages); this says the same
        json_schema_extra={
            "propertyNames": {"pattern": CONTEXT_KEY},
            "additionalProperties": _CONTEXT_VALUE,
            "properties": {
                **{k: _CONTEXT_VALUE for k in CONTEXT_KEYS},
                "run_url": {**_CONTEXT_VALUE, "pattern": RUN_URL},
            },
        },
    )
    break_glass: bool = Field(
        False,
        description="emergency access outside the action's windows, approved by a break-glass approver alone "
        "(with a written justification)",
    )

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        """Every string must be storable (and auditable) as UTF-8: a lone surrogate is a 400
        here, before anything is written."""
        for where, value in _strings(data):
            if not encodable(value):
                raise ValueError(f"{where} is not valid Unicode text")
        return data

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be blank")
        return v.strip()

    @field_validator("context")
    @classmethod
    def _context(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if not re.fullmatch(CONTEXT_KEY, k):
                raise ValueError(f"context key {k[:40]!r} must be lowercase letters, digits and _")
            if len(val) > MAX_CONTEXT_VALUE:
                raise ValueError(f"context.{k} is longer than {MAX_CONTEXT_VALUE} characters")
        url = v.get("run_url")
        if url and not re.fullmatch(RUN_URL, url):
            raise ValueError("context.run_url must be an http(s) URL")
        return v

    def fingerprint(self, pipeline: str, verified: Mapping[str, Any] | None = None) -> str:
        """What an Idempotency-Key promises: the same caller asking the same thing. The caller is
        the pipeline and, on a verified (OIDC) request, what its token vouches for (the run, its
        commit, its actor): keys are derived from public CI data, so another run of the same
        pipeline can compute one, and it must never get this run's request back."""
        parts: list[Any] = [pipeline, self.model_dump()]
        if verified:
            parts.append({"context": dict(verified.get("context") or {}), "by": verified.get("requested_by")})
        raw = json.dumps(parts, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(raw.encode()).hexdigest()


def _strings(data: Any, where: str = "body"):
    if isinstance(data, str):
        yield where, data
    elif isinstance(data, dict):
        for k, v in data.items():
            name = f"{where}.{k}" if isinstance(k, str) and encodable(k) else where
            if isinstance(k, str):
                yield f"{where} key", k
            yield from _strings(v, name)
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield from _strings(v, f"{where}[{i}]")


def parse_body(data: Any) -> RequestBody:
    """The body as a RequestBody, or a 400 naming the first problem."""
    if not isinstance(data, dict):
        raise E.BadRequest("the body must be a JSON object")
    try:
        return RequestBody.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        msg = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            msg = "unknown field"
        if not encodable(where):
            where = "body"
        raise E.BadRequest(f"{where}: {msg}"[:300]) from None
