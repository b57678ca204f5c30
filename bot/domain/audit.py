"""The tamper-evident audit trail: a Redis Stream where each entry hashes its predecessor.

entry.hash = sha256(prev_hash + canonical JSON of the entry without its hash). Editing,
deleting or reordering an entry breaks every hash after it. Trimming by age keeps the hash
of the last trimmed entry as the anchor, so what remains still verifies.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.exceptions import WatchError

from bot.domain import keys
from bot.domain.clock import now, rfc3339, to_ms

GENESIS = "0" * 64

#: Keys that must never reach the audit trail, wherever they hide in `details`.
_SECRET_KEYS = {"credential", "token", "request_token", "password", "secret", "dsn", "authorization"}


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def entry_hash(prev: str, body: dict[str, Any]) -> str:
    return hashlib.sha256((prev + canonical(body)).encode()).hexdigest()


def _scrub(details: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in details.items():
        if k.lower() in _SECRET_KEYS:
            continue
        out[k] = _scrub(v) if isinstance(v, dict) else v
    return out


@dataclass(frozen=True)
class AuditEntry:
    stream_id: str
    body: dict[str, Any]
    hash: str

    @property
    def seq(self) -> int:
        return int(self.body["seq"])


@dataclass(frozen=True)
class Broken:
    """Where verification failed and why."""

    seq: int | None
    stream_id: str
    reason: str


class AuditLog:
    def __init__(self, redis: Redis) -> None:
        self.r = redis

    def append(
        self,
        event: str,
        *,
        request_id: str | None = None,
        action: str | None = None,
        actor: str | None = None,
        outcome: str = "ok",
        details: dict[str, Any] | None = None,
    ) -> AuditEntry:
        t = now()
        body_base = {
            "time": rfc3339(t),
            "event": event,
            "request_id": request_id,
            "action": action,
            "actor": actor,
            "outcome": outcome,
            "details": _scrub(details or {}),
        }
        head_key = keys.audit_head()
        while True:
            with self.r.pipeline() as pipe:
                try:
                    pipe.watch(head_key)
                    head = pipe.hgetall(head_key)
                    seq = int(head.get("seq", 0)) + 1
                    prev = head.get("hash", GENESIS)
                    body = {**body_base, "seq": seq, "prev": prev}
                    h = entry_hash(prev, body)
                    # Stream ids carry the event time so `since` filters are range reads.
                    sid_ms = max(to_ms(t), int(head.get("ms", 0)))
                    sid = f"{sid_ms}-{seq}"
                    pipe.multi()
                    pipe.xadd(keys.audit_stream(), {"data": canonical(body), "hash": h}, id=sid)
                    pipe.hset(head_key, mapping={"seq": seq, "hash": h, "id": sid, "ms": sid_ms})
                    pipe.execute()
                    return AuditEntry(sid, body, h)
                except WatchError:
                    continue

    # ---------------------------------------------------------------- reading

    def _parse(self, sid: str, fields: dict[str, str]) -> AuditEntry:
        return AuditEntry(sid, json.loads(fields["data"]), fields["hash"])

    def entries(self, since_ms: int | None = None, batch: int = 1000) -> Iterator[AuditEntry]:
        start = f"{since_ms}-0" if since_ms else "-"
        while True:
            rows = self.r.xrange(keys.audit_stream(), min=start, max="+", count=batch)
            for sid, fields in rows:
                yield self._parse(sid, fields)
            if len(rows) < batch:
                return
            start = "(" + rows[-1][0]

    def latest(self, n: int) -> list[AuditEntry]:
        """Newest first."""
        rows = self.r.xrevrange(keys.audit_stream(), count=n)
        return [self._parse(sid, f) for sid, f in rows]

    def head(self) -> dict[str, str]:
        return self.r.hgetall(keys.audit_head())

    def count(self) -> int:
        return self.r.xlen(keys.audit_stream())

    # ---------------------------------------------------------------- verification

    def verify(self) -> tuple[int, Broken | None]:
        """Walk the chain. Returns (entries checked, first break or None)."""
        anchor = self.r.hgetall(keys.audit_anchor())
        prev = anchor.get("hash", GENESIS)
        expect_seq = int(anchor.get("seq", 0)) + 1
        n = 0
        for e in self.entries():
            n += 1
            if e.body.get("prev") != prev:
                return n, Broken(e.body.get("seq"), e.stream_id, "does not follow the entry before it")
            if e.body.get("seq") != expect_seq:
                return n, Broken(e.body.get("seq"), e.stream_id, f"sequence {e.body.get('seq')} where {expect_seq} was expected")
            if entry_hash(prev, e.body) != e.hash:
                return n, Broken(e.body.get("seq"), e.stream_id, "content does not match its hash (edited)")
            prev = e.hash
            expect_seq += 1
        head = self.head()
        if head and head.get("hash") != prev:
            return n, Broken(int(head.get("seq", 0)), head.get("id", "?"), "the chain head does not match the last entry (entries removed from the end)")
        return n, None

    # ---------------------------------------------------------------- retention

    def trim(self, older_than_ms: int) -> int:
        """Drop entries older than the cut, keeping the last dropped hash as the anchor."""
        rows = self.r.xrevrange(keys.audit_stream(), max=f"({older_than_ms}-0", min="-", count=1)
        if not rows:
            return 0
        last = self._parse(*rows[0])
        with self.r.pipeline() as pipe:
            pipe.hset(keys.audit_anchor(), mapping={"seq": last.seq, "hash": last.hash, "id": last.stream_id})
            pipe.xtrim(keys.audit_stream(), minid=f"{older_than_ms}-0")
            res = pipe.execute()
        return int(res[1])
