"""Who is calling the hook: a pipeline (static token or OIDC), or a request's own token."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from flask import Request

from bot.core.policy.oidc import OidcConfig
from bot.core.policy.policy import Policy
from bot.request.http.oidc import OidcRejected, verified_context


class Unauthorized(Exception):
    def __init__(self, message: str = "missing or invalid bearer token", status: int = 401) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Caller:
    pipeline: str | None
    bearer: str
    verified: dict[str, Any] | None = field(default=None)


def bearer_token(req: Request) -> str:
    auth = req.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or len(token) > 8192:
        raise Unauthorized()
    return token.strip()


def _looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2 and token.startswith("ey")


def pipeline_caller(req: Request, policy: Policy, oidc_verifier=None) -> Caller:
    """For creating requests: must be a pipeline (static token or OIDC)."""
    token = bearer_token(req)
    name = policy.pipeline_for_token(token)
    if name is not None:
        return Caller(name, token)
    if oidc_verifier is not None and _looks_like_jwt(token):
        configs = oidc_configs(policy)
        if configs:
            try:
                name, claims = oidc_verifier.verify(token, configs)
            except OidcRejected as e:
                raise Unauthorized(f"OIDC token rejected: {e.reason}", e.status) from None
            context, requested_by = verified_context(claims)
            return Caller(name, token, {"context": context, "requested_by": requested_by})
    raise Unauthorized()


_oidc_cache: dict[str, dict] = {}


def oidc_configs(policy: Policy) -> dict:
    """The policy's OIDC pipelines as validated configs (cached per policy version)."""
    cached = _oidc_cache.get(policy.sha256)
    if cached is None:
        cached = {n: OidcConfig.model_validate(p.oidc) for n, p in policy.pipelines.items() if p.oidc is not None}
        _oidc_cache.clear()
        _oidc_cache[policy.sha256] = cached
    return cached


def any_caller(req: Request, policy: Policy, oidc_verifier=None) -> Caller:
    """For follow-ups: a pipeline, or anyone holding a request_token (checked per request)."""
    token = bearer_token(req)
    name = policy.pipeline_for_token(token)
    if name is None and oidc_verifier is not None and _looks_like_jwt(token):
        try:
            return pipeline_caller(req, policy, oidc_verifier)
        except Unauthorized:
            pass
    return Caller(name, token)
