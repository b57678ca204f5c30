"""The grant-backend contract: how a credential is created for a request and destroyed again."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from bot.core.ports import GrantRequest

__all__ = ["BackendConfig", "BackendEnv", "GrantBackend", "GrantError", "GrantRequest", "register"]


class BackendConfig(BaseModel):
    """Base of every backend's `grant:` block in the policy; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Whether the grant type is named where users choose one (the list an unknown type's error
    #: shows); a type that is not is still accepted.
    offered: ClassVar[bool] = True

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

    def revoke(self, request: GrantRequest, credential: dict[str, Any] | None) -> dict[str, Any] | None:
        """Destroy what `grant` created. `credential` is None when the grant never completed.

        May return what the target saw of the credential's use (a session summary, keys as in
        bot/core/usage.py), or None. Collecting it is best effort: a failure to observe goes into
        the summary's `errors`, never into an exception, and never delays the revoke more than a
        short, bounded wait. The revoke itself comes first (jit stores the summary only after it).
        """
        raise NotImplementedError

    def extend(self, request: GrantRequest, credential: dict[str, Any]) -> dict[str, Any] | None:
        """The grant was extended to `request.expires_at`: bring the target along and return the
        credential as it is now, or None when nothing at the target depends on the window's end
        (jit's revoke at the new end is the bound). Idempotent; never shortens anything."""
        return None


@dataclass(frozen=True)
class BackendEnv:
    """What backends may use from the running bot: settings values and the token signer."""

    environ: dict[str, str]
    exec_timeout: float = 30.0
    token_signer: Any = None  # bot.core.crypto.TokenSigner, for the `token` backend


REGISTRY: dict[str, type[GrantBackend]] = {}
"""Backends by `type` name; `workers.backends.registry()` is the complete, discovered view."""


def register(cls: type[GrantBackend]) -> type[GrantBackend]:
    """Class decorator: make a backend available under its `type` name in the policy."""
    REGISTRY[cls.type] = cls
    return cls
