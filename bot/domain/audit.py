"""The tamper-evident audit trail: a Redis Stream where each entry hashes its predecessor.

entry.hash = sha256(prev_hash + canonical JSON of the entry without its hash). Editing,
deleting or reordering an entry breaks every hash after it. Trimming by age keeps the hash
of the last trimmed entry as the anchor, so what remains still verifies.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis import Redis

from bot.domain import keys
from bot.domain.clock import now, rfc3339, to_ms

GENESIS = "0" * 64
#: How many stream ids a request's index keeps, and how long it lives after its last event.
REQUEST_INDEX_LEN = 500
REQUEST_INDEX_TTL_S = 400 * 86400
#: The most entries one filtered read walks (newest first) before it gives up.
SCAN_LIMIT = 20_000
_INDEXABLE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

# Atomic trim: the anchor only ever moves forward, and the stream is cut exactly after it,
# so two trims racing (two workers) can never leave an anchor that does not match.
# KEYS: stream, anchor   ARGV: cut stream id (exclusive)
_TRIM = """
local rows = redis.call('XREVRANGE', KEYS[1], '(' .. ARGV[1], '-', 'COUNT', 1)
if #rows == 0 then return {0} end
local sid = rows[1][1]
local f = rows[1][2]
local data, hash
for i = 1, #f, 2 do
  if f[i] == 'data' then data = f[i + 1] elseif f[i] == 'hash' then hash = f[i + 1] end
end
local seq = cjson.decode(data)['seq']
local old = tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')
if seq <= old then return {0} end
redis.call('HSET', KEYS[2], 'seq', seq, 'hash', hash, 'id', sid)
local n = redis.call('XTRIM', KEYS[1], 'MINID', ARGV[1])
return {n, seq, hash, sid}
"""

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
        return int(self.body.get("seq") or 0)


@dataclass(frozen=True)
class Broken:
    """Where verification failed and why."""

    seq: int | None
    stream_id: str
    reason: str


# Chain the outbox's first event if the head is still the one the caller chained onto and the
# event is still first (optimistic: one round trip when this process wrote the last entry;
# otherwise the real head comes back for a retry).
# KEYS: head, stream, per-request index ('' for none), outbox
# ARGV: expected seq, expected hash, data, hash, stream-id ms, index length, index ttl, raw item
_APPEND = """
if redis.call('LINDEX', KEYS[4], 0) ~= ARGV[8] then return {2} end
local h = redis.call('HMGET', KEYS[1], 'seq', 'hash', 'ms')
local seq = tonumber(h[1] or '0')
local hash = h[2] or '""" + GENESIS + """'
local ms = tonumber(h[3] or '0')
if seq ~= tonumber(ARGV[1]) or hash ~= ARGV[2] or ms > tonumber(ARGV[5]) then
  return {0, tostring(seq), hash, tostring(ms)}
end
local sid = ARGV[5] .. '-' .. (seq + 1)
redis.call('XADD', KEYS[2], sid, 'data', ARGV[3], 'hash', ARGV[4])
redis.call('LPOP', KEYS[4])
redis.call('HSET', KEYS[1], 'seq', seq + 1, 'hash', ARGV[4], 'id', sid, 'ms', ARGV[5])
if KEYS[3] ~= '' then
  redis.call('RPUSH', KEYS[3], sid)
  redis.call('LTRIM', KEYS[3], -tonumber(ARGV[6]), -1)
  redis.call('EXPIRE', KEYS[3], ARGV[7])
end
return {1, sid}
"""


class AuditLog:
    def __init__(self, redis: Redis) -> None:
        self.r = redis
        self._append = redis.register_script(_APPEND)
        self._head: tuple[int, str, int] = (0, GENESIS, 0)  # our guess of (seq, hash, ms)

    def event_body(
        self,
        event: str,
        *,
        request_id: str | None = None,
        action: str | None = None,
        actor: str | None = None,
        outcome: str = "ok",
        details: dict[str, Any] | None = None,
    ) -> str:
        """An event as the store's scripts push it onto the outbox (JSON)."""
        return canonical(
            {
                "time": rfc3339(now()),
                "event": event,
                "request_id": request_id,
                "action": action,
                "actor": actor,
                "outcome": outcome,
                "details": _scrub(details or {}),
            }
        )

    def append(
        self,
        event: str,
        *,
        request_id: str | None = None,
        action: str | None = None,
        actor: str | None = None,
        outcome: str = "ok",
        details: dict[str, Any] | None = None,
    ) -> None:
        body = self.event_body(
            event, request_id=request_id, action=action, actor=actor, outcome=outcome, details=details
        )
        self.r.rpush(keys.audit_outbox(), '{"body":' + body + ',"patch":{}}')
        self.flush()

    def flush(self, limit: int = 10_000) -> int:
        """Chain what waits in the outbox into the stream, in order. Returns entries chained."""
        chained = 0
        while chained < limit:
            raw = self.r.lindex(keys.audit_outbox(), 0)
            if raw is None:
                return chained
            item = json.loads(raw)
            base = item["body"]
            patch = item.get("patch") or {}
            if patch:
                base = {**base, "details": {**(base.get("details") or {}), **patch}}
            request_id = base.get("request_id")
            index = keys.audit_by_request(request_id) if request_id and _INDEXABLE_ID.match(request_id) else ""
            t_ms = to_ms(datetime.fromisoformat(base["time"].replace("Z", "+00:00")))
            while True:
                seq_prev, prev, ms_prev = self._head
                body = {**base, "seq": seq_prev + 1, "prev": prev}
                h = entry_hash(prev, body)
                sid_ms = max(t_ms, ms_prev)
                res = self._append(
                    keys=[keys.audit_head(), keys.audit_stream(), index, keys.audit_outbox()],
                    args=[seq_prev, prev, canonical(body), h, sid_ms, REQUEST_INDEX_LEN, REQUEST_INDEX_TTL_S, raw],
                )
                if int(res[0]) == 1:
                    self._head = (seq_prev + 1, h, sid_ms)
                    chained += 1
                    break
                if int(res[0]) == 2:
                    break  # someone else chained it: look at the outbox again
                self._head = (int(res[1]), res[2], int(res[3]))
        return chained

    # ---------------------------------------------------------------- reading

    def _parse(self, sid: str, fields: dict[str, str]) -> AuditEntry:
        try:
            body = json.loads(fields["data"])
            if not isinstance(body, dict):
                raise ValueError
        except (KeyError, ValueError):  # a mangled entry still reads; verify() reports it
            body = {"event": "unreadable", "seq": None, "prev": None}
        return AuditEntry(sid, body, fields.get("hash", ""))

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

    def newest(self, since_ms: int | None = None, batch: int = 500) -> Iterator[AuditEntry]:
        """Newest first, back to `since_ms` (inclusive) or the start of the trail."""
        low = f"{since_ms}-0" if since_ms else "-"
        high = "+"
        while True:
            rows = self.r.xrevrange(keys.audit_stream(), max=high, min=low, count=batch)
            for sid, fields in rows:
                yield self._parse(sid, fields)
            if len(rows) < batch:
                return
            high = "(" + rows[-1][0]

    def entries_for_request(self, request_id: str, limit: int = 100) -> list[AuditEntry]:
        """One request's events, oldest first (its latest `limit`), from its index."""
        if not _INDEXABLE_ID.match(request_id or ""):
            return []
        idx = keys.audit_by_request(request_id)
        ids = self.r.lrange(idx, -max(limit, 1), -1)
        if not ids and not self.r.exists(idx):
            # The index outlived its TTL: fall back to a bounded scan of the recent trail.
            found = []
            for scanned, e in enumerate(self.newest(), 1):
                if e.body.get("request_id") == request_id:
                    found.append(e)
                if len(found) >= limit or scanned >= SCAN_LIMIT:
                    break
            return found[::-1]
        pipe = self.r.pipeline(transaction=False)
        for sid in ids:
            pipe.xrange(keys.audit_stream(), min=sid, max=sid)
        out = []
        for rows in pipe.execute():
            if rows:  # ids trimmed away by retention read as nothing
                out.append(self._parse(*rows[0]))
        return out

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
        # The head as the walk starts: entries appended while we walk only have to chain on.
        head = self.head()
        head_seq = int(head.get("seq", 0))
        at_head = prev if head_seq == expect_seq - 1 else None
        n = 0
        for e in self.entries():
            n += 1
            seq = e.body.get("seq")
            if seq != expect_seq:
                why = (f"found where #{expect_seq} was expected: entries are missing or out of order"
                       if isinstance(seq, int) else "unreadable")
                return n, Broken(seq, e.stream_id, why)
            if e.body.get("prev") != prev:
                return n, Broken(seq, e.stream_id, "does not follow the entry before it (an entry was changed or removed)")
            if entry_hash(prev, e.body) != e.hash:
                return n, Broken(e.body.get("seq"), e.stream_id, "content does not match its hash (edited)")
            prev = e.hash
            if expect_seq == head_seq:
                at_head = e.hash
            expect_seq += 1
        if head and head.get("hash") != at_head:
            return n, Broken(int(head.get("seq", 0)), head.get("id", "?"), "the chain head does not match the last entry (entries removed from the end)")
        return n, None

    # ---------------------------------------------------------------- retention

    def trim(self, older_than_ms: int) -> int:
        """Drop entries older than the cut, keeping the last dropped hash as the anchor."""
        res = self.r.eval(_TRIM, 2, keys.audit_stream(), keys.audit_anchor(), f"{older_than_ms}-0")
        return int(res[0])

    def anchor(self) -> dict[str, str]:
        """The last entry trimmed away ({seq, hash, id}), or {} when nothing was trimmed."""
        return self.r.hgetall(keys.audit_anchor())
