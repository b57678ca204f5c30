"""The grant-backend contract: how a credential is created for a request and destroyed again."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class BackendConfig(BaseModel):
    """Base of every backend's `grant:` block in the policy; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def warnings(self, environ: Mapping[str, str] | None = None) -> list[str]:
        """Valid but risky settings, which `jit policy check` prints without failing.

        Without `environ` a backend checks the policy text alone, with no network access. With
        it (the checking process's environment), a backend may also ask its target, briefly,
        and must turn any failure to do so into a warning rather than an exception.
        """
        return []


class GrantError(Exception):
    """A grant or revoke did not succeed; the job retries it with backoff.

    The message is shown in Slack and the audit trail, so it must never carry a secret.
    """


@dataclass(frozen=True)
class GrantRequest:
    """What a backend knows about the request it acts on (no Slack, no HTTP)."""

    id: str
    action: str
    pipeline: str
    requested_by: str | None
    reason: str
    ttl_seconds: int
    issued_at: datetime
    expires_at: datetime
    context: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        from bot.core.clock import rfc3339

        return {
            "id": self.id,
            "action": self.action,
            "pipeline": self.pipeline,
            "requested_by": self.requested_by,
            "reason": self.reason,
            "ttl_seconds": self.ttl_seconds,
            "issued_at": rfc3339(self.issued_at),
            "expires_at": rfc3339(self.expires_at),
            "context": dict(self.context),
        }


class GrantBackend:
    """One kind of credential. Subclasses set `type` and `Config` and register themselves.

    Both methods must be idempotent: a job can run twice, or die half-way and be retried.
    A second `grant` for the same request must not create a second identity, and `revoke`
    must succeed when the identity is already gone or was only partly created.
    """

    type: ClassVar[str]
    Config: ClassVar[type[BackendConfig]]
    #: True when the target itself refuses the credential after `expires_at`
    #: (defence in depth while the bot is down), e.g. PostgreSQL's VALID UNTIL.
    enforces_expiry: ClassVar[bool] = False

    def __init__(self, config: BackendConfig, env: BackendEnv) -> None:
        self.config = config
        self.env = env

    def grant(self, request: GrantRequest) -> dict[str, Any]:
        """Create the credential and return it (a JSON object handed to the pipeline)."""
        raise NotImplementedError

    def revoke(self, request: GrantRequest, credential: dict[str, Any] | None) -> None:
        """Destroy what `grant` created. `credential` is None when the grant never completed."""
        raise NotImplementedError


@dataclass(frozen=True)
class BackendEnv:
    """What backends may use from the running bot: settings values and the token signer."""

    environ: dict[str, str]
    exec_timeout: float = 30.0
    token_signer: Any = None  # bot.domain.tokens.TokenSigner, for the `token` backend


_REGISTRY: dict[str, type[GrantBackend]] = {}


def register(cls: type[GrantBackend]) -> type[GrantBackend]:
    """Class decorator: make a backend available under its `type` name in the policy."""
    _REGISTRY[cls.type] = cls
    return cls


_discovered = False


def registry() -> dict[str, type[GrantBackend]]:
    """All known backends, including those from the `jit.backends` entry-point group.

    Entry points are discovered once per process: scanning every installed distribution costs
    milliseconds, and this sits on the path of every grant and revoke.
    """
    global _discovered
    if not _discovered:
        from importlib.metadata import entry_points

        import workers.backends  # noqa: F401  (imports the built-in backends so they register)

        for ep in entry_points(group="jit.backends"):
            if ep.name not in _REGISTRY:
                register(ep.load())
        _discovered = True
    return dict(_REGISTRY)
