"""The due queue in Redis: a sorted set of work (`kind:request_id`) scored by the millisecond it is due.

An item leaves only when its job succeeded. Every claim of an item gets a token: only the job
holding the item's current token may extend, finish or retry it, and the store checks the same
token before a grant's side effect (fencing). Scheduling an item anew voids its claim, so a job
still running it holds stale work. The loop that claims due items and hands them to RQ is in
workers/queue/scheduler.py.
"""

from __future__ import annotations

from redis import Redis

from bot.store import keys
from bot.store.pipelined import run_scripts

#: A freshly kicked due item comes back due after this long, in case the job carrying it was
#: lost with its worker (a claimed one is re-scored to now + its lease).
LEASE_MS = 10_000

# KEYS: due, claims, seq   ARGV: now_ms, limit, lease_ms → flat [member, token, member, token, ...]
_CLAIM = """
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
if #items == 0 then return {} end
local base = redis.call('INCRBY', KEYS[3], #items) - #items
local score = tonumber(ARGV[1]) + tonumber(ARGV[3])
local out = {}
for i, m in ipairs(items) do
  local token = 'c' .. (base + i)
  redis.call('ZADD', KEYS[1], score, m)
  redis.call('HSET', KEYS[2], m, token)
  out[#out + 1] = m
  out[#out + 1] = token
end
return out
"""

# Members of one kind (`prefix`) falling due within the next few ms, claimed before they are due
# so that the claim and its hand-off are not on the path of the work (workers/queue/scheduler.py
# `AHEAD_MS`); members that someone holds a claim on (a lease about to lapse) are left alone.
# KEYS: due, claims, seq   ARGV: now_ms, until_ms, limit, lease_ms, prefix
# → flat [member, token, due_ms, ...]
_CLAIM_AHEAD = """
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], ARGV[2], 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
local score = tonumber(ARGV[1]) + tonumber(ARGV[4])
local prefix = ARGV[5]
local out = {}
for i = 1, #items, 2 do
  local m = items[i]
  if string.sub(m, 1, #prefix) == prefix and redis.call('HEXISTS', KEYS[2], m) == 0 then
    local token = 'c' .. redis.call('INCR', KEYS[3])
    redis.call('ZADD', KEYS[1], score, m)
    redis.call('HSET', KEYS[2], m, token)
    out[#out + 1] = m
    out[#out + 1] = token
    out[#out + 1] = items[i + 1]
  end
end
return out
"""

# KEYS: due, claims, attempts   ARGV: member, token
_DONE = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
"""

# KEYS: due, claims, attempts, wake
# ARGV: member, token, at_ms, count_attempt, now_ms, backoff_base_ms, backoff_cap_ms
# With count_attempt, the member comes back after an exponential backoff (base * 2^(n-1), capped).
# → attempts so far, or -1 when the claim is no longer this job's (nothing changed)
_RETRY = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return -1 end
local n = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '0')
local at = tonumber(ARGV[3])
if ARGV[4] == '1' then
  n = redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
  at = tonumber(ARGV[5]) + math.min(tonumber(ARGV[6]) * 2 ^ (n - 1), tonumber(ARGV[7]))
end
redis.call('ZADD', KEYS[1], at, ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], -16, -1)
return n
"""

# KEYS: due, claims, wake   ARGV: member, at_ms → new work: due at at_ms, any claim on it void
_SCHEDULE = """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('RPUSH', KEYS[3], '1')
redis.call('LTRIM', KEYS[3], -16, -1)
return 1
"""

# KEYS: due, claims   ARGV: member, token, new_score → 1 when the claim is still ours and extended
_EXTEND = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[1], 'XX', ARGV[3], ARGV[1])
return 1
"""


# KEYS: due, claims, attempts, wake, what the member works through (a sorted set)
# ARGV: member, token, now_ms → 1 done; 0 due again now (something waits still); -1 not our claim
_DONE_UNLESS_WAITING = """
if redis.call('HGET', KEYS[2], ARGV[1]) ~= ARGV[2] then return -1 end
redis.call('HDEL', KEYS[2], ARGV[1])
if redis.call('ZCARD', KEYS[5]) > 0 then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  redis.call('RPUSH', KEYS[4], '1')
  redis.call('LTRIM', KEYS[4], -16, -1)
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""


#: The due members that revoke a grant at its expiry are `expire:<request id>`.
EXPIRE_PREFIX = "expire:"


def channel_post_member(channel: str) -> str:
    """The due member that posts a channel's waiting first messages, in turn
    (workers/jobs/notify/pacing.py `drain_channel`)."""
    return f"post:{channel}"


BACKOFF_BASE_MS = 1000
BACKOFF_CAP_MS = 60_000


class DueQueue:
    def __init__(self, redis: Redis) -> None:
        self.r = redis
        self._claim = redis.register_script(_CLAIM)
        self._claim_ahead = redis.register_script(_CLAIM_AHEAD)
        self._done = redis.register_script(_DONE)
        self._retry = redis.register_script(_RETRY)
        self._extend = redis.register_script(_EXTEND)
        self._schedule = redis.register_script(_SCHEDULE)
        self._done_unless_waiting = redis.register_script(_DONE_UNLESS_WAITING)

    def schedule(self, member: str, at_ms: int) -> None:
        """New work: `member` is due at `at_ms`; a job running it on an older claim is stale."""
        self._schedule(keys=[keys.due(), keys.due_claims(), keys.due_wake()], args=[member, at_ms])

    def claim(self, now_ms: int, limit: int = 500, lease_ms: int = LEASE_MS) -> list[tuple[str, str]]:
        """Members due by `now_ms`, each with the token of this claim."""
        flat = self._claim(keys=[keys.due(), keys.due_claims(), keys.due_claim_seq()], args=[now_ms, limit, lease_ms])
        return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]

    def claim_ahead(
        self, now_ms: int, until_ms: int, prefix: str, limit: int = 100, lease_ms: int = LEASE_MS
    ) -> list[tuple[str, str, int]]:
        """Members starting with `prefix`, not due yet but by `until_ms`, unclaimed: each with the
        token of this claim (leased `lease_ms` from `now_ms`) and the ms it is due. Whoever takes
        them must not start one before it is due."""
        flat = self._claim_ahead(
            keys=[keys.due(), keys.due_claims(), keys.due_claim_seq()], args=[now_ms, until_ms, limit, lease_ms, prefix]
        )
        return [(flat[i], flat[i + 1], int(float(flat[i + 2]))) for i in range(0, len(flat), 3)]

    def done(self, member: str, token: str) -> bool:
        return bool(self._done(keys=[keys.due(), keys.due_claims(), keys.due_attempts()], args=[member, token]))

    def done_unless_waiting(self, member: str, token: str, waiting: str, now_ms: int) -> int:
        """`done` for a member that works through the sorted set `waiting` — unless something
        waits there now (it came in after the member's last look): then it is due again at once,
        in the same atomic step, so no crash in between can leave that entry with nobody to
        take it. 1 done, 0 due again, -1 the claim was no longer ours."""
        return int(
            self._done_unless_waiting(
                keys=[keys.due(), keys.due_claims(), keys.due_attempts(), keys.due_wake(), waiting],
                args=[member, token, now_ms],
            )
        )

    def ensure(self, member: str, at_ms: int) -> bool:
        """`member` is due by `at_ms` unless it is queued already (a claim on it stays valid).
        True when it was not queued."""
        pipe = self.r.pipeline(transaction=True)
        pipe.zadd(keys.due(), {member: at_ms}, nx=True)
        pipe.rpush(keys.due_wake(), "1")
        pipe.ltrim(keys.due_wake(), -16, -1)
        return bool(pipe.execute()[0])

    def retry_at(self, member: str, token: str, at_ms: int) -> None:
        """Put a member back, due at `at_ms` (not a failure: Retry-After, a busy lock)."""
        self._retry(
            keys=[keys.due(), keys.due_claims(), keys.due_attempts(), keys.due_wake()],
            args=[member, token, at_ms, "0", 0, 0, 0],
        )

    def failed(self, member: str, token: str, now_ms: int) -> int:
        """Count a failed attempt and put the member back after its backoff. Returns attempts
        so far (-1 when the claim was no longer ours: nothing changed)."""
        return int(
            self._retry(
                keys=[keys.due(), keys.due_claims(), keys.due_attempts(), keys.due_wake()],
                args=[member, token, 0, "1", now_ms, BACKOFF_BASE_MS, BACKOFF_CAP_MS],
            )
        )

    def extend(self, member: str, token: str, new_score: int) -> bool:
        return bool(self._extend(keys=[keys.due(), keys.due_claims()], args=[member, token, new_score]))

    def extend_many(self, items: list[tuple[str, str]], new_score: int) -> list[bool]:
        """`extend` for many (member, token) in one round trip."""
        calls = [(self._extend, [keys.due(), keys.due_claims()], [m, t, new_score]) for m, t in items]
        return [bool(x) for x in run_scripts(self.r, calls)]

    def done_many(self, items: list[tuple[str, str]]) -> None:
        """`done` for many (member, token) in one round trip."""
        if not items:
            return
        ks = [keys.due(), keys.due_claims(), keys.due_attempts()]
        run_scripts(self.r, [(self._done, ks, [member, token]) for member, token in items])

    def retry_at_many(self, items: list[tuple[str, str, int]]) -> None:
        """`retry_at` for many (member, token, at_ms) in one round trip."""
        if not items:
            return
        ks = [keys.due(), keys.due_claims(), keys.due_attempts(), keys.due_wake()]
        run_scripts(self.r, [(self._retry, ks, [member, token, at_ms, "0", 0, 0, 0]) for member, token, at_ms in items])

    def count_due(self, now_ms: int) -> int:
        """Members due by `now_ms` (claimed ones are leased into the future: not counted)."""
        return int(self.r.zcount(keys.due(), "-inf", now_ms))

    def next_due_ms(self) -> int | None:
        head = self.r.zrange(keys.due(), 0, 0, withscores=True)
        return int(head[0][1]) if head else None

    def score(self, member: str) -> int | None:
        s = self.r.zscore(keys.due(), member)
        return None if s is None else int(s)

    def size(self) -> int:
        return self.r.zcard(keys.due())
