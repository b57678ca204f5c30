"""Per-pipeline rate limit on request creation (a sliding minute window in Redis)."""

from __future__ import annotations

import secrets

from redis import Redis

from bot.domain import errors as E
from bot.domain import keys
from bot.domain.clock import now_ms

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
