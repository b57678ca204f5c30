"""The access request: its statuses, its fields, and how it reads from and to Redis."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from bot.core.clock import from_ms


class Status(StrEnum):
    PENDING = "pending"
    APPROVED = "approved"  # threshold met, grant queued
    ACTIVE = "active"  # credential issued
    EXPIRED = "expired"  # TTL ran out, revoked
    REVOKED = "revoked"  # ended early by an approver or the pipeline
    DENIED = "denied"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    FAILED = "failed"  # grant kept failing


#: A request's approvals are fields of its hash: `approval:<user id>` → approval time (ms).
APPROVAL_FIELD = "approval:"

OPEN = frozenset({Status.PENDING, Status.APPROVED, Status.ACTIVE})
FINAL = frozenset(Status) - OPEN
#: Statuses a long-poll keeps waiting through.
UNDECIDED = frozenset({Status.PENDING, Status.APPROVED})


@dataclass
class AccessRequest:
    id: str
    action: str
    pipeline: str
    reason: str
    ttl: timedelta
    status: Status
    created_at: datetime
    pending_until: datetime
    approvals_required: int
    channel: str
    requested_by: str | None = None
    requester_slack_id: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    verified: bool = False  # created with a verified OIDC token
    #: Which of `context` (and `requested_by`) came from verified claims; the rest the pipeline
    #: merely said.
    verified_keys: tuple[str, ...] = ()
    policy_sha256: str = ""
    #: The hash of the request_token (bot/core/crypto.py RequestTokens): the token itself is
    #: never stored, only made again from the id when it is handed back.
    request_token_hash: str = ""
    approvals: list[tuple[str, datetime]] = field(default_factory=list)
    decided_by: str | None = None
    decided_at: datetime | None = None
    deny_reason: str | None = None
    issued_at: datetime | None = None
    expires_at: datetime | None = None
    revoked_by: str | None = None
    revoked_at: datetime | None = None
    revoke_done_at: datetime | None = None
    error: str | None = None
    message_ts: str | None = None
    #: Something a grant issued (or may have issued) is still to be revoked.
    revoke_pending: bool = False
    #: The request's hash as it was read, for the fields no attribute above names (`break_glass`,
    #: `approved_oncall`, …): read with the rest, not in a round trip of their own.
    fields: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    # -------------------------------------------------------------- redis mapping

    def to_hash(self) -> dict[str, str]:
        """The fields written at creation (later fields are set by the transitions)."""
        return {
            "id": self.id,
            "action": self.action,
            "pipeline": self.pipeline,
            "reason": self.reason,
            "ttl_s": str(int(self.ttl.total_seconds())),
            "status": self.status.value,
            "created_ms": _ms(self.created_at),
            "pending_until_ms": _ms(self.pending_until),
            "approvals_required": str(self.approvals_required),
            "channel": self.channel,
            "requested_by": self.requested_by or "",
            "requester_slack_id": self.requester_slack_id or "",
            "context": json.dumps(self.context, sort_keys=True, separators=(",", ":")),
            "verified": "1" if self.verified else "",
            "verified_keys": ",".join(self.verified_keys),
            "policy_sha256": self.policy_sha256,
            "request_token_hash": self.request_token_hash,
        }

    @classmethod
    def from_hash(cls, h: dict[str, str], approvals: dict[str, str] | None = None) -> AccessRequest:
        """`approvals`: the hash of its own (user → ms) that requests made by earlier versions keep
        their approvals in; a request made now keeps them in `h` (APPROVAL_FIELD)."""

        def t(name: str) -> datetime | None:
            v = h.get(name)
            return from_ms(v) if v else None

        given = dict(approvals or {})
        given.update((k.removeprefix(APPROVAL_FIELD), v) for k, v in h.items() if k.startswith(APPROVAL_FIELD))
        apr = sorted(((u, from_ms(ms)) for u, ms in given.items()), key=lambda a: a[1])
        return cls(
            id=h["id"],
            action=h["action"],
            pipeline=h["pipeline"],
            reason=h.get("reason", ""),
            ttl=timedelta(seconds=int(h["ttl_s"])),
            status=Status(h["status"]),
            created_at=from_ms(h["created_ms"]),
            pending_until=from_ms(h["pending_until_ms"]),
            approvals_required=int(h["approvals_required"]),
            channel=h.get("channel", ""),
            requested_by=h.get("requested_by") or None,
            requester_slack_id=h.get("requester_slack_id") or None,
            context=json.loads(h.get("context") or "{}"),
            verified=bool(h.get("verified")),
            verified_keys=tuple(k for k in (h.get("verified_keys") or "").split(",") if k),
            policy_sha256=h.get("policy_sha256", ""),
            request_token_hash=h.get("request_token_hash", ""),
            approvals=apr,
            decided_by=h.get("decided_by") or None,
            decided_at=t("decided_ms"),
            deny_reason=h.get("deny_reason") or None,
            issued_at=t("issued_ms"),
            expires_at=t("expires_ms"),
            revoked_by=h.get("revoked_by") or None,
            revoked_at=t("revoked_ms"),
            revoke_done_at=t("revoke_done_ms"),
            error=h.get("error") or None,
            message_ts=h.get("message_ts") or None,
            revoke_pending=bool(h.get("revoke_pending")),
            fields=dict(h),
        )

    # -------------------------------------------------------------- views

    @property
    def approved_by(self) -> list[str]:
        return [u for u, _ in self.approvals]

    @property
    def reminder_at(self) -> datetime:
        """When a request still pending reminds its approvers: half-way to its timeout."""
        return self.created_at + (self.pending_until - self.created_at) / 2


def _ms(dt: datetime) -> str:
    return str(int(round(dt.timestamp() * 1000)))
