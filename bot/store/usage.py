"""Usage seen from the target side, in Redis: a token's introspection checks counted per resource
server (the first few audited one by one, the rest summed up per window), and each request's session
summary stored once, sealed, with its `session.usage` audit event in the same atomic step."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis import Redis

from bot.core.clock import from_ms, rfc3339
from bot.store import keys

#: Checks of one token by one resource server written to the audit trail one by one; beyond, only
#: counted, and summed up in one entry per window once that window is over. Bounded for the life
#: of a grant, not per minute: a busy resource server must not push a request's creation and
#: approvals out of its audit index (the last 500 entries of a request).
CHECKS_AUDITED = 10
WINDOW_MS = 600_000
#: Summaries of finished windows one call hands out at most (the next calls hand out the rest).
SUMMARIES_PER_CALL = 20

# Count one check; say whether to audit it; hand out the suppressed counts of windows that are
# over (anyone's: a summary must not wait for its resource server to come back); and owe the
# request's message an update (`usage:<id>`, at most one per ARGV[9] ms).
# KEYS: 1 checks hash, 2 suppressed counts, 3 due summaries, 4 request hash, 5 due queue,
#       6 due claims, 7 due wake
# ARGV: 1 now ms, 2 window ms, 3 checks audited one by one, 4 server, 5 member ([request id,
#       server] JSON), 6 most summaries to hand out, 7 '1' when the answer was active, 8 ttl s,
#       9 update delay ms, 10 due member of the message update
# → {1 when this check is to be written else 0, checks so far, member, count, window end ms, …}
_HAND_OUT = """
local function hand_out(out, suppressed, due_set, now, most)
  local due = redis.call('ZRANGEBYSCORE', due_set, '-inf', now, 'WITHSCORES', 'LIMIT', 0, most)
  for i = 1, #due, 2 do
    local c = redis.call('HGET', suppressed, due[i])
    redis.call('HDEL', suppressed, due[i])
    redis.call('ZREM', due_set, due[i])
    if c then
      table.insert(out, due[i]); table.insert(out, c); table.insert(out, due[i + 1])
    end
  end
  return out
end
"""

_CHECK = (
    _HAND_OUT
    + """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local server = ARGV[4]
local out = hand_out({0, 0}, KEYS[2], KEYS[3], now, tonumber(ARGV[6]))
local n = redis.call('HINCRBY', KEYS[1], server .. ':n', 1)
out[2] = n
if ARGV[7] == '1' then redis.call('HINCRBY', KEYS[1], server .. ':active', 1) end
redis.call('HSETNX', KEYS[1], server .. ':first', now)
redis.call('HSET', KEYS[1], server .. ':last', now)
redis.call('EXPIRE', KEYS[1], ARGV[8])
local ts = redis.call('HGET', KEYS[4], 'message_ts')
if ts and ts ~= '' then
  local m = ARGV[10]
  local score = redis.call('ZSCORE', KEYS[5], m)
  -- waiting already: it renders the latest count when it runs; claimed: its job may have read the
  -- count before this check, so it comes back (only these checks ever schedule `usage:` items)
  if (not score) or redis.call('HEXISTS', KEYS[6], m) == 1 then
    redis.call('ZADD', KEYS[5], now + tonumber(ARGV[9]), m)
    redis.call('HDEL', KEYS[6], m)
    redis.call('RPUSH', KEYS[7], '1')
    redis.call('LTRIM', KEYS[7], -16, -1)
  end
end
if n <= tonumber(ARGV[3]) then
  out[1] = 1
  return out
end
redis.call('HINCRBY', KEYS[2], ARGV[5], 1)
redis.call('ZADD', KEYS[3], 'NX', (math.floor(now / window) + 1) * window, ARGV[5])
return out
"""
)

# The suppressed counts of windows that are over, without a check (the worker's upkeep: a sum
# must not wait for the next check, which may never come).
# KEYS: 1 suppressed counts, 2 due summaries   ARGV: 1 now ms, 2 most to hand out
# → {0, 0, member, count, window end ms, …}
_DUE = (
    _HAND_OUT
    + """
return hand_out({0, 0}, KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]))
"""
)

# Keep a request's session summary once, with its audit event, in one step: a second revoke
# (at-least-once) finds it kept and records nothing.
# KEYS: 1 usage, 2 request hash, 3 audit outbox   ARGV: 1 sealed summary, 2 ttl s, 3 event body,
#       4 headline (JSON)
_RECORD = """
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then return 0 end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HSET', KEYS[2], 'usage', ARGV[4]) end
redis.call('RPUSH', KEYS[3], '{"body":' .. ARGV[3] .. ',"patch":{}}')
return 1
"""


@dataclass(frozen=True)
class Counted:
    """One check counted: whether to audit it, the pair's checks so far, and finished windows'
    suppressed counts ((request id, server, count, window end ms) each) to audit now."""

    write: bool
    count: int
    suppressed: list[tuple[str, str, int, int]]


def usage_member(request_id: str) -> str:
    """The due member that brings a request's message up to date with its usage counts."""
    return f"usage:{request_id}"


class UsageStore:
    def __init__(self, redis: Redis, retention_s: int) -> None:
        self.r = redis
        self.retention_s = retention_s
        self._check = redis.register_script(_CHECK)
        self._record = redis.register_script(_RECORD)
        self._due = redis.register_script(_DUE)

    def count_check(self, request_id: str, server: str, active: bool, now_ms: int, update_ms: int) -> Counted:
        out = [_text(v) for v in self._check(
            keys=[
                keys.token_checks(request_id),
                keys.token_checks_suppressed(),
                keys.token_checks_due(),
                keys.request(request_id),
                keys.due(),
                keys.due_claims(),
                keys.due_wake(),
            ],
            args=[
                now_ms,
                WINDOW_MS,
                CHECKS_AUDITED,
                server,
                json.dumps([request_id, server]),
                SUMMARIES_PER_CALL,
                "1" if active else "",
                self.retention_s,
                update_ms,
                usage_member(request_id),
            ],
        )]  # fmt: skip
        return Counted(out[0] == "1", int(out[1]), _suppressed(out))

    def due_summaries(self, now_ms: int) -> list[tuple[str, str, int, int]]:
        """Suppressed counts of windows that are over: (request id, server, count, window end ms)."""
        out = [_text(v) for v in self._due(
            keys=[keys.token_checks_suppressed(), keys.token_checks_due()], args=[now_ms, SUMMARIES_PER_CALL]
        )]  # fmt: skip
        return _suppressed(out)

    def checks(self, request_id: str) -> dict[str, dict[str, Any]]:
        """Resource server → {count, active, first, last} (times RFC 3339) for one request's token."""
        raw = self.r.hgetall(keys.token_checks(request_id))
        out: dict[str, dict[str, Any]] = {}
        for field, value in raw.items():
            server, _, what = field.rpartition(":")
            entry = out.setdefault(server, {"count": 0, "active": 0})
            if what == "n":
                entry["count"] = int(value)
            elif what == "active":
                entry["active"] = int(value)
            elif what in ("first", "last"):
                entry[what] = rfc3339(from_ms(value))
        return out

    def record(self, request_id: str, sealed: str, event_body: str, headline: dict[str, Any]) -> bool:
        """Keep the sealed summary and push its audit event, unless one is kept already."""
        return bool(
            self._record(
                keys=[keys.usage(request_id), keys.request(request_id), keys.audit_outbox()],
                args=[sealed, self.retention_s, event_body, json.dumps(headline, sort_keys=True)],
            )
        )

    def sealed(self, request_id: str) -> str | None:
        return self.r.get(keys.usage(request_id))

    def headline(self, request_id: str) -> dict[str, Any] | None:
        return parse_headline(self.r.hget(keys.request(request_id), "usage"))


def parse_headline(raw: str | None) -> dict[str, Any] | None:
    """A request's `usage` field (its session's headline), or None when it has none."""
    try:
        value = json.loads(raw) if raw else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _suppressed(out: list[str]) -> list[tuple[str, str, int, int]]:
    found = []
    for i in range(2, len(out), 3):
        rid, who = json.loads(out[i])
        found.append((rid, who, int(out[i + 1]), int(out[i + 2])))
    return found
