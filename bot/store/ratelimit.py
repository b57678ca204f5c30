"""What one pipeline may use of the hook: request creations per minute, long-polls open at once."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from redis import Redis
from redis.exceptions import RedisError

from bot.core import errors as E
from bot.core.clock import now_ms
from bot.store import keys

log = logging.getLogger("jit.hook")

# KEYS: zset   ARGV: now_ms, window_ms, limit, member → 0 when allowed, else ms until a slot frees
_SLIDE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[2]))
local n = redis.call('ZCARD', KEYS[1])
if n >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return tonumber(oldest[2]) + tonumber(ARGV[2]) - tonumber(ARGV[1])
end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 0
"""


class RateLimited(E.JitError):
    """Too many requests from this pipeline; retry later."""

    code = "rate_limited"
    http_status = 429

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many requests from this pipeline; retry in {retry_after_s}s")
        self.retry_after_s = retry_after_s


class PipelineRateLimiter:
    def __init__(self, redis: Redis, per_minute: int) -> None:
        self.r = redis
        self.per_minute = per_minute
        self._script = redis.register_script(_SLIDE)

    def check(self, pipeline: str | None) -> None:
        if not pipeline or self.per_minute <= 0:
            return
        now = now_ms()
        # A random member: creations in the same millisecond in other processes (or threads)
        # must never overwrite each other's entry and go uncounted.
        member = f"{now}-{secrets.token_hex(8)}"
        wait_ms = self._script(keys=[keys.rate_limit(pipeline)], args=[now, 60_000, self.per_minute, member])
        if wait_ms:
            raise RateLimited(max(1, -(-int(wait_ms) // 1000)))


#: Long-polls one request may have open at once: its pipeline's job holds one, plus a few a
#: dropped connection leaves behind until their `wait` runs out.
MAX_LONG_POLLS_PER_REQUEST = 4
#: A lease outlives its poll's `wait` by this much, then counts no more (a process that died
#: mid-poll never releases it).
LEASE_MARGIN_MS = 5_000
#: Retry-After over the bound: when the earliest lease in the way ends, but never later than this
#: (most polls end early, the moment their request changes).
MAX_RETRY_AFTER_S = 10

# KEYS: pipeline's leases, request's leases (sorted sets lease → end ms)
# ARGV: now_ms, lease end ms, pipeline max (0 = none), request max, lease id
# → 0 when the lease was taken, else ms until the earliest lease in the way ends
_TAKE = """
local now = tonumber(ARGV[1])
local function wait_for(key, max)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if max > 0 and redis.call('ZCARD', key) >= max then
    local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    return math.max(tonumber(first[2]) - now, 1)
  end
  return 0
end
local wait = math.max(wait_for(KEYS[1], tonumber(ARGV[3])), wait_for(KEYS[2], tonumber(ARGV[4])))
if wait > 0 then return wait end
local ttl = tonumber(ARGV[2]) - now
for i = 1, 2 do
  redis.call('ZADD', KEYS[i], ARGV[2], ARGV[5])
  if redis.call('PTTL', KEYS[i]) < ttl then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return 0
"""


class TooManyLongPolls(E.JitError):
    """This pipeline (or request) already has as many long-polls open as it may."""

    code = "too_many_long_polls"
    http_status = 429

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many long-polls open for this pipeline or request; retry in {retry_after_s}s")
        self.retry_after_s = retry_after_s


class LongPollLeases:
    """Counts the long-polls open per pipeline and per request, across every server process."""

    def __init__(self, redis: Redis, per_pipeline: int, per_request: int = MAX_LONG_POLLS_PER_REQUEST) -> None:
        self.r = redis
        self.per_pipeline = per_pipeline
        self.per_request = per_request
        self._take = redis.register_script(_TAKE)

    @contextmanager
    def hold(self, pipeline: str, request_id: str, seconds: float) -> Iterator[None]:
        """One lease for a poll of at most `seconds`; TooManyLongPolls when none is free."""
        lease = secrets.token_hex(8)
        leases = [keys.long_polls_of_pipeline(pipeline), keys.long_polls_of_request(request_id)]
        now = now_ms()
        end = now + int(seconds * 1000) + LEASE_MARGIN_MS
        wait_ms = int(self._take(keys=leases, args=[now, end, self.per_pipeline, self.per_request, lease]))
        if wait_ms:
            raise TooManyLongPolls(min(MAX_RETRY_AFTER_S, max(1, -(-wait_ms // 1000))))
        try:
            yield
        finally:
            try:
                pipe = self.r.pipeline(transaction=False)
                for key in leases:
                    pipe.zrem(key, lease)
                pipe.execute()
            except RedisError as e:  # the lease ends on its own at `end`
                log.warning("could not release a long-poll lease: %s", type(e).__name__)
