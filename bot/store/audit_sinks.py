"""Each audit sink's cursor and outage in Redis: what it has acknowledged, since when it fails.

A cursor is the stream id (and seq) of the last entry the sink acknowledged. It only moves
forward (one Lua step), so a delivery that lost its lease and finishes late can never move it
back over entries someone else delivered since. Retention trims nothing past the lowest cursor of
the configured sinks (`floor`).
"""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis

from bot.core.clock import now_ms
from bot.store import keys
from bot.store.audit import stream_order

#: A sink with no cursor yet reads the stream from its start.
FROM_START = "0-0"

# Stream ids, not seqs, decide "forward": an entry someone forged into the stream may claim any seq.
# KEYS: sink hash   ARGV: stream id, seq, now ms
# Returns 1 when the cursor moved, 0 when it already stood there or further.
_ADVANCE = """
local function parse(id)
  local ms, n = string.match(id or '', '^(%d+)-(%d+)$')
  return tonumber(ms or '0'), tonumber(n or '0')
end
local cur = redis.call('HGET', KEYS[1], 'id')
if cur then
  local cms, cn = parse(cur)
  local nms, nn = parse(ARGV[1])
  if nms < cms or (nms == cms and nn <= cn) then return 0 end
end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'seq', ARGV[2], 'acked_ms', ARGV[3])
return 1
"""

# KEYS: sink hash   ARGV: now ms, error (short, no secrets)
# Returns {failing since ms, attempts}
_FAILED = """
redis.call('HSETNX', KEYS[1], 'failing_since_ms', ARGV[1])
local n = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'last_error', ARGV[2])
return {redis.call('HGET', KEYS[1], 'failing_since_ms'), n}
"""

# KEYS: sink hash   Returns {failing since ms or '', attempts or '', alerted or ''} and clears them
_RECOVERED = """
local h = redis.call('HMGET', KEYS[1], 'failing_since_ms', 'attempts', 'alerted')
redis.call('HDEL', KEYS[1], 'failing_since_ms', 'attempts', 'last_error', 'alerted')
return {h[1] or '', h[2] or '', h[3] or ''}
"""


@dataclass(frozen=True)
class Outage:
    since_ms: int
    attempts: int
    alerted: bool = False


class SinkCursors:
    def __init__(self, redis: Redis) -> None:
        self.r = redis
        self._advance = redis.register_script(_ADVANCE)
        self._failed = redis.register_script(_FAILED)
        self._recovered = redis.register_script(_RECOVERED)

    # ---------------------------------------------------------------- cursors

    def register(self, names: list[str]) -> None:
        """These are the sinks now (what /metrics reports on)."""
        pipe = self.r.pipeline(transaction=True)
        pipe.delete(keys.audit_sinks())
        if names:
            pipe.sadd(keys.audit_sinks(), *names)
        pipe.execute()

    def start_at_head(self, name: str) -> None:
        """A new sink configured with `start: now`: its cursor is the current head (only if it
        has none yet)."""
        head = self.r.hgetall(keys.audit_head())
        if head.get("id"):
            self.r.hsetnx(keys.audit_sink(name), "seq", head.get("seq", "0"))
            self.r.hsetnx(keys.audit_sink(name), "id", head["id"])

    def cursor(self, name: str) -> tuple[str, int]:
        """(stream id, seq) of the last entry the sink acknowledged; (FROM_START, 0) for none."""
        sid, seq = self.r.hmget(keys.audit_sink(name), "id", "seq")
        return (sid or FROM_START, int(seq or 0))

    def advance(self, name: str, sid: str, seq: int) -> bool:
        return bool(self._advance(keys=[keys.audit_sink(name)], args=[sid, seq, now_ms()]))

    def floor(self, names: list[str]) -> str | None:
        """The lowest stream id every one of `names` has acknowledged (FROM_START when one has
        acknowledged nothing); None without sinks: nothing holds retention back."""
        if not names:
            return None
        pipe = self.r.pipeline(transaction=False)
        for name in names:
            pipe.hget(keys.audit_sink(name), "id")
        ids = pipe.execute()
        if any(not sid for sid in ids):
            return FROM_START
        return min(ids, key=stream_order)

    def behind(self, names: list[str], seq: int) -> dict[str, int]:
        """The sinks whose cursor is below entry #seq: name → the seq they acknowledged."""
        out = {}
        for name in names:
            _, acked = self.cursor(name)
            if acked < seq:
                out[name] = acked
        return out

    # ---------------------------------------------------------------- outages

    def failed(self, name: str, error: str) -> Outage:
        since, attempts = self._failed(keys=[keys.audit_sink(name)], args=[now_ms(), error[:200]])
        return Outage(int(since), int(attempts))

    def recovered(self, name: str) -> Outage | None:
        """The outage that just ended (cleared), or None when the sink was not failing."""
        since, attempts, alerted = self._recovered(keys=[keys.audit_sink(name)])
        if not since:
            return None
        return Outage(int(since), int(attempts or 0), bool(alerted))

    def claim_alert(self, name: str) -> bool:
        """True once per outage, however many workers see it: the one that may alert."""
        return bool(self.r.hsetnx(keys.audit_sink(name), "alerted", now_ms()))

    # ---------------------------------------------------------------- lag

    def lag_seconds(self, name: str, at_ms: int | None = None) -> float:
        """How long the oldest entry the sink has not acknowledged has waited (0 when none)."""
        sid, _ = self.cursor(name)
        rows = self.r.xrange(keys.audit_stream(), min=f"({sid}", max="+", count=1)
        if not rows:
            return 0.0
        return max(0.0, ((at_ms or now_ms()) - stream_order(rows[0][0])[0]) / 1000)

    def lags(self) -> dict[str, float]:
        """Lag of every registered sink (for /metrics)."""
        t = now_ms()
        return {name: self.lag_seconds(name, t) for name in sorted(self.r.smembers(keys.audit_sinks()))}
