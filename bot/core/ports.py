"""What the services need from the world, as Protocols: the adapters in store/, the Slack
directory, the RQ dispatcher and the grant backends implement them; wiring.py plugs them in."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from bot.core.clock import rfc3339


class Directory(Protocol):
    """Who is in a Slack user group (cached; implemented against Slack's API)."""

    def members(self, group_id: str) -> set[str]: ...


class Effects(Protocol):
    """Hands due-queue items to workers at once, under the claim `token` the store recorded."""

    def kick(self, members: list[str], token: str) -> None: ...


class AuditOutbox(Protocol):
    """The audit trail's side of a transition: event bodies pushed in the same atomic step."""

    def event_body(
        self,
        event: str,
        *,
        request_id: str | None = None,
        action: str | None = None,
        actor: str | None = None,
        outcome: str = "ok",
        details: dict | None = None,
    ) -> str: ...

    def flush(self) -> int: ...

    def flush_soon(self) -> None: ...


class Metrics(Protocol):
    """Counters and timings of the request lifecycle (a failed write never fails the caller)."""

    def request(self, action: str, outcome: str) -> None: ...

    def approval_wait(self, action: str, seconds: float) -> None: ...

    def granted(self, action: str, backend: str, seconds: float) -> None: ...

    def revoked(self, action: str, backend: str, seconds: float, lateness_s: float | None) -> None: ...

    def revoked_many(self, revokes: list[tuple[str, str, str, float, float | None]]) -> None:
        """(action, outcome, backend, seconds, lateness_s) per revoke: `request` + `revoked` for each."""
        ...


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


class GrantBackend(Protocol):
    """Creates and destroys one kind of credential (workers/backends/). Both idempotent."""

    type: str
    enforces_expiry: bool
    config: Any

    def grant(self, request: GrantRequest) -> dict[str, Any]: ...

    def revoke(self, request: GrantRequest, credential: dict[str, Any] | None) -> dict[str, Any] | None:
        """Destroy the credential; may return what the target saw of its use (bot/core/usage.py)."""
        ...

    def extend(self, request: GrantRequest, credential: dict[str, Any]) -> dict[str, Any] | None: ...
