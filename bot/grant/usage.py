"""What was done with a grant, seen from the target side: a resource server checking a token
(`/v1/introspect`), and the session summary a backend observed at revoke — audited, kept
encrypted with the request, shown on its message (docs/audit.md, docs/backends.md)."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from bot.core.clock import now_ms, rfc3339_ms
from bot.core.crypto import Vault
from bot.core.model import AccessRequest
from bot.core.usage import bounded, digest, headline, secret_values
from bot.store.audit import AuditLog
from bot.store.usage import WINDOW_MS, UsageStore

log = logging.getLogger("jit.usage")


def resource_server(audiences: Iterable[str]) -> str:
    """How an introspection caller is named: the audiences its credential is for (`*`: any)."""
    return ",".join(sorted(audiences))[:200] or "?"


class UsageService:
    def __init__(self, store: UsageStore, audit: AuditLog, vault: Vault, update_ms: int = 30_000) -> None:
        self.store = store
        self.audit = audit
        self.vault = vault
        self.update_ms = update_ms

    # ---------------------------------------------------------------- while the grant lives

    def token_checked(self, req: AccessRequest, audiences: Iterable[str], active: bool, why: str | None = None) -> None:
        """A resource server (named by the audiences its introspection credential is for) asked
        whether `req`'s token is active. Counted always; the first checks by each resource server
        audited one by one, the rest summed up in one entry per window once it is over: a server
        calling in a loop cannot flood the trail."""
        server = resource_server(audiences)
        counted = self.store.count_check(req.id, server, active, now_ms(), self.update_ms)
        self._sum_up(counted.suppressed)
        if counted.write:
            details: dict[str, Any] = {"resource_server": server, "active": active, "checks": counted.count}
            if why:
                details["why"] = why
            self.audit.append(
                "session.token_checked",
                request_id=req.id,
                action=req.action,
                actor=f"resource-server:{server}",
                details=details,
            )

    def write_due_summaries(self) -> int:
        """Sum up the checks of windows that are over, without waiting for the next check (the
        worker's upkeep calls this). Returns the entries written."""
        found = self.store.due_summaries(now_ms())
        self._sum_up(found)
        return len(found)

    def _sum_up(self, suppressed: list[tuple[str, str, int, int]]) -> None:
        for rid, who, n, end in suppressed:
            self.audit.append(
                "session.token_checks_suppressed",
                request_id=rid,
                actor=f"resource-server:{who}",
                details={
                    "resource_server": who,
                    "count": n,
                    "window_start": rfc3339_ms(end - WINDOW_MS),
                    "window_end": rfc3339_ms(end),
                },
            )

    def checks(self, request_id: str) -> dict[str, dict[str, Any]]:
        return self.store.checks(request_id)

    def headline(self, request_id: str) -> dict[str, Any] | None:
        """The recorded session summary's headline (counts, no query text), or None."""
        return self.store.headline(request_id)

    # ---------------------------------------------------------------- at revoke

    def record_session(
        self, req: AccessRequest, backend_type: str, summary: dict[str, Any] | None, credential: Any
    ) -> bool:
        """Keep what the backend observed (plus the token checks counted) and audit it as
        `session.usage`, once per request however often the revoke runs. Never raises: usage is
        best effort and must not hold up the revoke. Its event waits in the audit outbox for the
        caller's next write (the revoke's record) to chain it."""
        try:
            found = dict(summary) if isinstance(summary, dict) else {}
            checks = self.store.checks(req.id)
            if checks or (backend_type == "token" and credential is not None):  # "never checked" is news too
                found["checks"] = checks
            if not found:
                return False
            kept = bounded(found, secret_values(credential))
            head = headline(kept)
            body = self.audit.event_body(
                "session.usage",
                request_id=req.id,
                action=req.action,
                actor="jit",
                details={"backend": backend_type, "sha256": digest(kept), **head},
            )
            # Its event is chained with the revoke's, which is recorded next (a flush per grant
            # here cost a storm a sixth of its CPU); what a dying process leaves, any flush chains.
            return self.store.record(req.id, self.vault.seal(kept), body, head)
        except Exception as e:  # noqa: BLE001 - never in the way of the revoke
            log.warning("could not record the usage of %s: %s", req.id, type(e).__name__)
            return False

    def summary(self, request_id: str) -> dict[str, Any] | None:
        """The whole summary kept for a request (decrypted), or None."""
        sealed = self.store.sealed(request_id)
        if not sealed:
            return None
        value = self.vault.open(sealed)
        return value if isinstance(value, dict) else None
