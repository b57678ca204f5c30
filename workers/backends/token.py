"""`token`: the bot itself issues a signed JWT (EdDSA), checkable offline (JWKS) or online (introspection)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from workers.backends.base import BackendConfig, GrantBackend, GrantRequest, register


class TokenConfig(BackendConfig):
    audience: str | None = None
    scope: str | None = Field(None, max_length=500)
    claims: dict[str, str] = {}


@register
class TokenBackend(GrantBackend):
    type = "token"
    Config = TokenConfig
    enforces_expiry = True  # verifiers reject it after `exp`

    def grant(self, request: GrantRequest) -> dict[str, Any]:
        claims: dict[str, Any] = {
            **self.config.claims,
            "sub": request.pipeline,
            "act": request.action,
            "jti": request.id,
            "iat": int(request.issued_at.timestamp()),
            "nbf": int(request.issued_at.timestamp()),
            "exp": int(request.expires_at.timestamp()),
        }
        if self.config.audience:
            claims["aud"] = self.config.audience
        if self.config.scope:
            claims["scope"] = self.config.scope
        token = self.env.token_signer.sign(claims)
        return {"token": token, "token_type": "Bearer", "expires_at": request.as_json()["expires_at"]}

    def extend(self, request: GrantRequest, credential: dict[str, Any]) -> dict[str, Any] | None:
        # The token carries its `exp`: a new one with the new end (same jti, same claims); the
        # pipeline fetches it again. The old one stays valid until its own `exp`, no longer.
        return self.grant(request)

    def revoke(self, request: GrantRequest, credential: dict[str, Any] | None) -> None:
        # Nothing to destroy: introspection answers inactive once the request is not active,
        # and the token's own `exp` bounds it for verifiers that only check signatures.
        return None
