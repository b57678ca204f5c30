"""④ After access ends: the session record `jit run` sends — kept sealed with the request, audited by
its transcript's digest, read back for auditors (`/jit audit <id>`, `jit audit export --request`)."""

from __future__ import annotations

import re
from typing import Any

from bot.core import errors as E
from bot.core.clock import now, rfc3339, to_ms
from bot.core.crypto import Vault
from bot.core.model import AccessRequest
from bot.request.schemas import SessionBody
from bot.request.service import FollowUp
from bot.store.audit import AuditLog
from bot.store.requests import Store

#: Context keys that name the CI run, most specific first (verified OIDC claims, then what the client said).
RUN_KEYS = ("run_id", "pipeline_id")
_RUN_IN_URL = re.compile(r"/(?:runs|pipelines|jobs)/(\d+)")


def run_of(context: dict[str, Any]) -> str | None:
    """The CI run a request came from: its run / pipeline id, else the number in its run_url."""
    for key in RUN_KEYS:
        if context.get(key):
            return str(context[key])
    m = _RUN_IN_URL.search(str(context.get("run_url") or ""))
    return m.group(1) if m else None


class SessionService:
    def __init__(self, store: Store, audit: AuditLog, vault: Vault, transcript_max: int) -> None:
        self.store = store
        self.audit = audit
        self.vault = vault
        self.transcript_max = transcript_max

    def record(self, follow_up: FollowUp, body: SessionBody) -> dict[str, Any]:
        """Keep the record of a grant that has ended; once per request. Returns what was audited."""
        req = follow_up.request
        size = len(body.transcript.encode())
        if size > self.transcript_max:
            raise E.TooLarge(f"the transcript is {size} bytes; at most {self.transcript_max} are kept (send its tail)")
        summary = self.summary(req, body)
        record = {**summary, "transcript": body.transcript}
        event = self.audit.event_body(
            "session.ended",
            request_id=req.id,
            action=req.action,
            actor=f"pipeline:{req.pipeline}",
            details=summary,
        )
        out = self.store.record_session(req.id, self.vault.seal(record), to_ms(now()), event)
        if out.result == "exists":
            raise E.SessionRecorded("this request's session was recorded already")
        if out.result == "not_ended":
            raise E.GrantNotOver(
                f"a session is recorded after its grant ended (released, revoked or expired); this request is "
                f"{out.status}"
            )
        if out.result == "missing":
            raise E.NotFound()
        return summary

    @staticmethod
    def summary(req: AccessRequest, body: SessionBody) -> dict[str, Any]:
        """Everything but the transcript: what the audit trail and Slack show."""
        out: dict[str, Any] = {
            "started_at": body.started_at,
            "ended_at": body.ended_at,
            "exit_code": body.exit_code,
            "duration_ms": body.duration_ms,
            "output_bytes": body.output_bytes,
            "output_lines": body.output_lines,
            "ended_by": body.ended_by,
            "transcript_sha256": body.transcript_sha256,
            "transcript_bytes": len(body.transcript.encode()),
            "transcript_truncated": body.transcript_truncated,
            "run": run_of(req.context),
            "run_url": req.context.get("run_url"),
            "runner": body.runner,
            "recorded_at": rfc3339(now()),
        }
        return {k: v for k, v in out.items() if v is not None}

    def read(self, request_id: str) -> dict[str, Any] | None:
        """The stored record (transcript included), or None: none sent, or gone with its request."""
        blob = self.store.session_blob(request_id)
        if not blob:
            return None
        record = self.vault.open(blob)
        return record if isinstance(record, dict) else None
