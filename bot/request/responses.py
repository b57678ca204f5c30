"""What the pipeline hook answers, as models: the routes serialise through them and `/openapi.json`
publishes their JSON Schema, so what is documented is what is served."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from bot.core.clock import rfc3339
from bot.core.errors import JitError, OutsideWindow
from bot.core.model import AccessRequest, Status

#: The one time format in JSON bodies (`bot.core.clock.rfc3339`).
Timestamp = Annotated[
    str, Field(description="RFC 3339 UTC, e.g. 2026-11-25T21:40:00.123Z", json_schema_extra={"format": "date-time"})
]
#: A status is a plain string to a pipeline: its values inline, not a separate component.
StatusName = Annotated[Status, WithJsonSchema({"type": "string", "enum": [s.value for s in Status]})]


class Answer(BaseModel):
    """A JSON body the hook sends. Strict, and closed unless a model says otherwise: a field the
    document does not name, or of another type, fails here instead of reaching a pipeline."""

    model_config = ConfigDict(extra="forbid", strict=True)

    def to_json(self) -> dict[str, Any]:
        """The body as sent; a field that was never set (an optional one) is left out, not null."""
        return self.model_dump(mode="json", exclude_unset=True)


class Error(Answer):
    """Every refusal: a stable code and a message for people."""

    error: str = Field(description="stable machine-readable code")
    message: str
    next_opening: Timestamp | None = Field(
        None,
        description="with `outside_window` only: when the action's next change window opens (null: none ahead)",
    )

    @classmethod
    def of(cls, e: JitError) -> Error:
        if isinstance(e, OutsideWindow):
            return cls(error=e.code, message=e.message, next_opening=rfc3339(e.next_opening))
        return cls(error=e.code, message=e.message)


class Approvals(Answer):
    count: int = Field(ge=0)
    required: int = Field(ge=1)
    by: list[str] = Field(description="Slack user ids")


class RequestView(Answer):
    """A request as its pipeline sees it (`GET /v1/requests/{id}`): never a credential or token."""

    model_config = ConfigDict(title="AccessRequest")

    id: str
    action: str
    pipeline: str
    status: StatusName
    reason: str
    requested_by: str | None
    ttl: int = Field(ge=1, description="seconds")
    context: dict[str, str]
    approvals: Approvals
    decided_by: str | None
    deny_reason: str | None
    created_at: Timestamp
    pending_until: Timestamp
    issued_at: Timestamp | None
    expires_at: Timestamp | None = Field(
        description="set when the credential is issued; an extension only ever moves it later"
    )
    revoked_by: str | None
    revoke_pending: bool = Field(description="a credential issued (or possibly issued) is still being revoked")
    verified_fields: list[str] = Field(
        description="context keys (and requested_by) that came from a verified OIDC token"
    )
    error: str | None

    @classmethod
    def of(cls, req: AccessRequest, **more: Any) -> Self:
        """`req` as its pipeline sees it; `more` are a subclass's fields."""
        return cls(
            id=req.id,
            action=req.action,
            pipeline=req.pipeline,
            status=req.status,
            reason=req.reason,
            requested_by=req.requested_by,
            ttl=int(req.ttl.total_seconds()),
            context=req.context,
            approvals=Approvals(count=len(req.approvals), required=req.approvals_required, by=req.approved_by),
            decided_by=req.decided_by,
            deny_reason=req.deny_reason,
            created_at=rfc3339(req.created_at),
            pending_until=rfc3339(req.pending_until),
            issued_at=rfc3339(req.issued_at),
            expires_at=rfc3339(req.expires_at),
            revoked_by=req.revoked_by,
            revoke_pending=req.revoke_pending,
            verified_fields=sorted(req.verified_keys),
            error=req.error,
            **more,
        )


class CreatedRequest(RequestView):
    """The answer to `POST /v1/requests`: the request, its token and where to follow it."""

    model_config = ConfigDict(title="CreatedRequest")

    request_token: str = Field(description="a bearer token for this request's follow-up calls only")
    url: str = Field(json_schema_extra={"format": "uri"})


class Credential(Answer):
    id: str
    credential: dict[str, Any] = Field(description="what the action's grant backend issued")
    expires_at: Timestamp
    backend: str = Field(
        None,
        description="the grant backend's type (`postgres`, `redis_acl`, `token`, …): how `jit run` exports it; "
        "absent from servers older than `jit run`",
        json_schema_extra=lambda s: s.pop("default", None),
    )

    @classmethod
    def of(cls, credential: dict[str, Any], req: AccessRequest, backend: str | None = None) -> Credential:
        more = {"backend": backend} if backend else {}
        return cls(id=req.id, credential=credential, expires_at=rfc3339(req.expires_at), **more)


class SessionReceipt(Answer):
    """The answer to `POST /v1/requests/{id}/session`: what was recorded (never the transcript)."""

    id: str
    transcript_sha256: str = Field(description="the digest the audit entry `session.ended` carries")
    transcript_bytes: int = Field(ge=0)
    recorded_at: Timestamp


def _absent_not_null(schema: dict[str, Any]) -> None:
    """A claim the token does not carry is left out of the answer, never sent as null."""
    for prop in schema["properties"].values():
        prop.pop("default", None)


class Introspection(Answer):
    """RFC 7662: `{active: false}`, or `active: true` with the token's claims."""

    # the policy may add claims of its own (the `token` backend's `claims`)
    model_config = ConfigDict(extra="allow", json_schema_extra=_absent_not_null)

    active: bool
    token_type: str = Field(None, description="`Bearer`")
    sub: str = Field(None, description="the pipeline")
    act: str = Field(None, description="the action")
    jti: str = Field(None, description="the request id")
    iss: str = Field(None)
    aud: str = Field(None)
    scope: str = Field(None)
    iat: int = Field(None)
    nbf: int = Field(None)
    exp: int = Field(None)

    @classmethod
    def inactive(cls) -> Introspection:
        return cls(active=False)

    @classmethod
    def of(cls, claims: dict[str, Any]) -> Introspection:
        # after the claims: no claim of the policy's may say `active` or `token_type` instead
        return cls.model_validate({**claims, "active": True, "token_type": "Bearer"})


class Jwk(Answer):
    kty: Literal["OKP"]
    crv: Literal["Ed25519"]
    x: str
    kid: str
    alg: Literal["EdDSA"]
    use: Literal["sig"]


class Jwks(Answer):
    keys: list[Jwk]


class Ok(Answer):
    ok: Literal[True]
