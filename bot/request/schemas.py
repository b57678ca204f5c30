"""The body a pipeline sends to ask for access (`POST /v1/requests`), validated before anything is written."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema, field_validator, model_validator

from bot.core import errors as E
from bot.core.clock import DURATION, MAX_DURATION_S
from bot.core.identity import encodable

MAX_REASON = 500
_Body = TypeVar("_Body", bound=BaseModel)
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
        return storable(data)

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


class ExtendBody(BaseModel):
    """`POST /v1/requests/{id}/extend`: more time for an active grant."""

    model_config = ConfigDict(extra="forbid", strict=True, title="ExtendRequest")

    ttl: Annotated[int | str | None, WithJsonSchema(_TTL_SCHEMA)] = Field(
        None,
        description="time to add to the window: `90s`, `15m`, `2h` or integer seconds; absent = the action's "
        "default ttl",
    )
    reason: str = Field("", max_length=MAX_REASON, description="why the job needs more time (shown to approvers)")

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        return storable(data)


def storable(data: Any) -> Any:
    """Every string must be storable (and auditable) as UTF-8: a lone surrogate is a 400 here,
    before anything is written."""
    for where, value in _strings(data):
        if not encodable(value):
            raise ValueError(f"{where} is not valid Unicode text")
    return data


def parse_extend_body(data: Any) -> ExtendBody:
    """The body as an ExtendBody, or a 400 naming the first problem."""
    return _parsed(ExtendBody, data)


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
    return _parsed(RequestBody, data)


def _parsed(model: type[_Body], data: Any) -> _Body:
    if not isinstance(data, dict):
        raise E.BadRequest("the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise E.BadRequest(_first_problem(e)) from None


def _first_problem(e: ValidationError) -> str:
    first = e.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown field"
    if not encodable(where):
        where = "body"
    return f"{where}: {msg}"[:300]


# ------------------------------------------------------------------------- the session record

#: `POST /v1/requests/{id}/session`: the most transcript a pipeline may send (its tail), in UTF-8 bytes.
MAX_TRANSCRIPT = 1024 * 1024
SHA256_HEX = r"^[0-9a-f]{64}$"
RFC3339 = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$"


class SessionBody(BaseModel):
    """`POST /v1/requests/{id}/session`: what `jit run` saw its command do with the grant."""

    model_config = ConfigDict(extra="forbid", strict=True, title="SessionRecord")

    started_at: str = Field(pattern=RFC3339, max_length=40, description="when the command started (RFC 3339)")
    ended_at: str = Field(pattern=RFC3339, max_length=40, description="when it ended (RFC 3339)")
    exit_code: int = Field(ge=0, le=255, description="the command's exit code (128 + N for signal N)")
    duration_ms: int = Field(ge=0, le=366 * 86400 * 1000)
    output_bytes: int = Field(ge=0, description="bytes the command wrote to stdout and stderr")
    output_lines: int = Field(ge=0)
    transcript: str = Field(
        description=f"the masked output, stdout and stderr as they came; its last {MAX_TRANSCRIPT} bytes (UTF-8) "
        "at most (JIT_SESSION_TRANSCRIPT_MAX_BYTES)"
    )
    transcript_sha256: str = Field(pattern=SHA256_HEX, description="sha256 (hex) of `transcript` as UTF-8")
    transcript_truncated: bool = Field(False, description="the start of the output was cut to fit the cap")
    ended_by: Literal["command", "grant_end", "interrupt"] = Field(
        "command",
        description="`command`: it exited by itself; `grant_end`: jit stopped it when the grant was revoked or "
        "expired; `interrupt`: a SIGINT/SIGTERM jit forwarded",
    )
    runner: str | None = Field(None, min_length=1, max_length=200, description="the CI runner that ran it")

    @model_validator(mode="before")
    @classmethod
    def _storable(cls, data: Any) -> Any:
        for where, value in _strings(data):
            if not encodable(value):
                raise ValueError(f"{where} is not valid Unicode text")
        return data

    @model_validator(mode="after")
    def _digest(self) -> SessionBody:
        if hashlib.sha256(self.transcript.encode()).hexdigest() != self.transcript_sha256:
            raise ValueError("transcript_sha256 is not the sha256 of transcript (UTF-8)")
        if _when(self.ended_at) < _when(self.started_at):
            raise ValueError("ended_at is before started_at")
        return self


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def parse_session(data: Any) -> SessionBody:
    """The body as a SessionBody, or a 400 naming the first problem."""
    if not isinstance(data, dict):
        raise E.BadRequest("the body must be a JSON object")
    try:
        return SessionBody.model_validate(data)
    except ValidationError as e:
        raise E.BadRequest(_first_problem(e)) from None
