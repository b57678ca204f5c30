"""Refusals into the audit trail, at most so many per actor and window: the rest are counted and summed up."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from redis import Redis

from bot.core.clock import now_ms, rfc3339_ms
from bot.store import keys
from bot.store.audit import AuditLog

#: Refusals of one kind by one actor written to the audit trail per window; beyond, only counted.
REFUSALS_PER_WINDOW = 10
WINDOW = timedelta(minutes=1)
#: Summaries of finished windows one call writes at most (the next calls write the rest).
SUMMARIES_PER_CALL = 20

# Count one refusal, and hand out the suppressed counts of windows that are over (anyone's: a
# summary must not wait for its actor to come back).
# KEYS: this actor's counter (hash start, n), suppressed counts (hash member → n),
#       due summaries (sorted set member → window end ms)
# ARGV: now ms, window ms, limit, member ([event, actor] as JSON), most summaries to hand out
# → {1 when this refusal is to be written else 0, member, count, window end ms, member, …}
_COUNT = """
local now, window, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {0}
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[5]))
for i = 1, #due, 2 do
  local n = redis.call('HGET', KEYS[2], due[i])
  redis.call('HDEL', KEYS[2], due[i])
  redis.call('ZREM', KEYS[3], due[i])
  if n then
    table.insert(out, due[i]); table.insert(out, n); table.insert(out, due[i + 1])
  end
end
local start = tonumber(redis.call('HGET', KEYS[1], 'start') or '-1')
if start < 0 or now >= start + window then
  redis.call('HSET', KEYS[1], 'start', now, 'n', 1)
  redis.call('PEXPIRE', KEYS[1], window)
  out[1] = 1
  return out
end
if redis.call('HINCRBY', KEYS[1], 'n', 1) <= limit then
  out[1] = 1
  return out
end
redis.call('HINCRBY', KEYS[2], ARGV[4], 1)
redis.call('ZADD', KEYS[3], start + window, ARGV[4])
return out
"""


def summary_event(event: str) -> str:
    """`slack.refused` → `slack.refusals_suppressed`: the entry that sums up what was not written."""
    return f"{event.rsplit('.', 1)[0]}.refusals_suppressed"


def record_refusal(
    redis: Redis,
    audit: AuditLog,
    event: str,
    *,
    actor: str | None,
    request_id: str | None = None,
    action: str | None = None,
    details: dict[str, Any] | None = None,
    limit: int = REFUSALS_PER_WINDOW,
    window: timedelta = WINDOW,
) -> bool:
    """Append a refusal (`outcome: refused`) to the audit trail, unless `actor` already has `limit`
    refusals of this kind in the current window: then only count it. The count reaches the trail
    as one `….refusals_suppressed` entry once the window is over (written by the next refusal of
    anyone). One actor cannot make the trail grow faster than `limit` + 1 entries per window and
    kind. Returns whether this refusal was written."""
    window_ms = int(window.total_seconds() * 1000)
    member = json.dumps([event, actor or ""])
    script = redis.register_script(_COUNT)
    out = [
        _text(v)
        for v in script(
            keys=[
                keys.refusals(event, actor or "-"),
                keys.refusals_suppressed(),
                keys.refusals_due(),
            ],
            args=[now_ms(), window_ms, limit, member, SUMMARIES_PER_CALL],
        )
    ]
    for i in range(1, len(out), 3):
        suppressed_event, who = json.loads(out[i])
        end = int(out[i + 2])
        audit.append(
            summary_event(suppressed_event),
            actor=who or None,
            outcome="refused",
            details={
                "event": suppressed_event,
                "count": int(out[i + 1]),
                "window_start": rfc3339_ms(end - window_ms),
                "window_end": rfc3339_ms(end),
            },
        )
    if out[0] != "1":
        return False
    audit.append(event, request_id=request_id, action=action, actor=actor, outcome="refused", details=details)
    return True


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
