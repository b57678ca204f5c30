"""How a policy recognises an OIDC pipeline: issuer, audience and the claims that must match."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bot.core.net import check_url


class OidcConfig(BaseModel):
    """How one pipeline is recognised: the issuer, the audience it asks for and its claims.

    `claims` values are exact strings or fnmatch globs (`*`, `?`, `[...]`; `*` also matches
    `/`), compared case-sensitively; every one must match. For a list claim (GitLab's
    `groups_direct`) one matching element is enough. Pin the repository: prefer the numeric
    `repository_id` / `project_id`, names can be re-registered.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    issuer: str
    audience: Annotated[str, Field(min_length=1)]
    #: At least one: without claims any repository on the issuer could match.
    claims: Annotated[dict[str, str], Field(min_length=1)]
    jwks_url: str | None = None

    @field_validator("issuer")
    @classmethod
    def _issuer_url(cls, v: str) -> str:
        return check_url(v, "issuer")

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url(cls, v: str | None) -> str | None:
        return None if v is None else check_url(v, "jwks_url")

    @field_validator("claims")
    @classmethod
    def _claim_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not name:
                raise ValueError("claim names must not be empty")
        return v

    def matches(self, claims: Mapping[str, Any]) -> bool:
        """True when the (already verified) claims carry this audience and every claim rule."""
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if claims.get("iss") != self.issuer or self.audience not in auds:
            return False
        return all(_claim_matches(claims.get(k), pattern) for k, pattern in self.claims.items())


def claim_text(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int):
        return str(value)
    return None


def _claim_matches(value: Any, pattern: str) -> bool:
    values = value if isinstance(value, list) else [value]
    for v in values:
        text = claim_text(v)
        if text is not None and fnmatch.fnmatchcase(text, pattern):
            return True
    return False
