"""The expiry queue: a Redis sorted set of due work, and the scheduler loop that fires it.

Members are `kind:request_id` (kinds: grant, expire, revoke, timeout, slack) scored by the
time they are due, in milliseconds. The scheduler claims due members atomically (re-scoring
them to now + lease) and hands each to an RQ job; the job removes its member only when it
succeeded, so a revocation is never lost: a job lost with its worker comes due again when its
lease runs out, and whatever fell due while no worker ran is claimed on start-up.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid

from redis import Redis
from rq import Queue

from bot.store import keys
from bot.store.requests import LEASE_MS

log = logging.getLogger("jit.expiry")

ACCESS_QUEUE = "jit-access"  # grants, revokes, timeouts: never behind Slack traffic
SLACK_QUEUE = "jit-slack"

# Every claim of a member gets a token; only the job holding the member's current token may
# extend, finish or retry it, and the store checks the same token before a grant's side effect
# (fencing). A member scheduled anew loses its claim (its running job's work is stale).
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

#: How long a member the scheduler handed to RQ may wait in the queue before it is handed out
#: again. A queued job is not lost with a worker (it waits in Redis for the next one); only a
#: running job is, and `Lease` shortens the lease to LEASE_MS as soon as the job starts. With
#: LEASE_MS here instead, a queue backlog over 10 s made the scheduler enqueue every waiting
#: member again, and again every 10 s: the backlog fed itself (bench/RESULTS.md).
QUEUED_LEASE_MS = 60_000

BACKOFF_BASE_MS = 1000
BACKOFF_CAP_MS = 60_000


class Lease:
    """Keeps a claimed member's lease alive while its job runs, so a long grant or revoke is not
    handed to a second worker; a worker that dies stops extending, and the member comes due.

    `held` says whether the claim was still this job's when it started: a job whose claim was
    re-issued meanwhile (it waited in RQ longer than its lease) must not run at all."""

    def __init__(self, due: DueQueue, member: str, token: str, lease_ms: int = LEASE_MS) -> None:
        self.due = due
        self.member = member
        self.token = token
        self.lease_ms = lease_ms
        self.held = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._beat, name="jit-lease", daemon=True)

    def _extend(self) -> bool:
        try:
            return self.due.extend(self.member, self.token, now_ms() + self.lease_ms)
        except Exception:  # noqa: BLE001 - Redis away: the lease may lapse; the claim fences
            return False

    def _beat(self) -> None:
        while not self._stop.wait(self.lease_ms / 3000):
            with self._lock:
                if self._stop.is_set() or not self._extend():
                    return

    def __enter__(self) -> Lease:
        # The scheduler claimed the member with a queue lease (QUEUED_LEASE_MS): from now on a
        # lost worker is what to guard against, so the lease becomes the short running one.
        self.held = self._extend()
        if self.held:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        # No join (a thread hand-off costs milliseconds per job on a busy machine): once we hold
        # the lock, no extend is in flight and none can start.
        self._stop.set()
        with self._lock:
            pass


#: Kinds that only talk to Slack; everything else (grants, revokes, timeouts) never waits behind them.
SLACK_KINDS = ("slack:", "dm:", "remind:", "warn:", "bgalert:", "notice:")


def queue_for(member: str) -> str:
    return SLACK_QUEUE if member.startswith(SLACK_KINDS) else ACCESS_QUEUE


class DueQueue:
    def __init__(self, redis: Redis) -> None:
        self.r = redis
        self._claim = redis.register_script(_CLAIM)
        self._done = redis.register_script(_DONE)
        self._retry = redis.register_script(_RETRY)
        self._extend = redis.register_script(_EXTEND)
        self._schedule = redis.register_script(_SCHEDULE)

    def schedule(self, member: str, at_ms: int) -> None:
        """New work: `member` is due at `at_ms`; a job running it on an older claim is stale."""
        self._schedule(keys=[keys.due(), keys.due_claims(), keys.due_wake()], args=[member, at_ms])

    def claim(self, now_ms: int, limit: int = 500, lease_ms: int = LEASE_MS) -> list[tuple[str, str]]:
        """Members due by `now_ms`, each with the token of this claim."""
        flat = self._claim(keys=[keys.due(), keys.due_claims(), keys.due_claim_seq()], args=[now_ms, limit, lease_ms])
        return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]

    def done(self, member: str, token: str) -> bool:
        return bool(self._done(keys=[keys.due(), keys.due_claims(), keys.due_attempts()], args=[member, token]))

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

    def next_due_ms(self) -> int | None:
        head = self.r.zrange(keys.due(), 0, 0, withscores=True)
        return int(head[0][1]) if head else None

    def score(self, member: str) -> int | None:
        s = self.r.zscore(keys.due(), member)
        return None if s is None else int(s)

    def size(self) -> int:
        return self.r.zcard(keys.due())


class Dispatcher:
    """Hands due members to RQ jobs (the `Effects` the store calls after a transition)."""

    def __init__(self, raw_redis: Redis) -> None:
        self.queues = {
            name: Queue(name, connection=raw_redis) for name in (ACCESS_QUEUE, SLACK_QUEUE)
        }

    def kick(self, members: list[str], token: str) -> None:
        self.kick_many([(m, token) for m in members])

    def kick_many(self, items: list[tuple[str, str]]) -> None:
        """Enqueue the items in one round trip. When many are due at once, several share a job
        (fewer per job than there are items per worker), which spares RQ's per-job overhead."""
        if not items:
            return
        by_queue: dict[str, list[tuple[str, str]]] = {}
        for item in items:
            by_queue.setdefault(queue_for(item[0]), []).append(item)
        first = next(iter(self.queues.values()))
        with first.connection.pipeline() as pipe:
            for name, group in by_queue.items():
                size = max(1, min(MAX_BATCH, -(-len(group) // 4)))
                for i in range(0, len(group), size):
                    chunk = group[i : i + size]
                    tag = uuid.uuid4().hex[:6]
                    if len(chunk) == 1:
                        ((m, token),) = chunk
                        func, args, job_id = "workers.jobs.run_due", (m, token), f"{m.replace(':', '-')}-{token}-{tag}"
                    else:
                        func, args, job_id = "workers.jobs.run_due_batch", (chunk,), f"batch-{len(chunk)}-{tag}"
                    self.queues[name].enqueue_call(
                        func, args=args, job_id=job_id, result_ttl=0, failure_ttl=86400, ttl=3600,
                        timeout=600, pipeline=pipe,
                    )
            pipe.execute()


#: Most due items one job carries.
MAX_BATCH = 20


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Scheduler:
    """Wakes for the next due member (not on a coarse tick) and hands it to a job.

    Waiting: a blocking pop on the wake list (pushed whenever something is scheduled) covers
    long waits; the last stretch is a local sleep, because Redis only checks blocking timeouts
    about every 100 ms.
    """

    def __init__(self, redis: Redis, blocking_redis: Redis, dispatcher: Dispatcher, batch: int = 500) -> None:
        self.due = DueQueue(redis)
        self.blocking = blocking_redis
        self.dispatcher = dispatcher
        self.batch = batch
        self.stopping = threading.Event()

    def run_once(self) -> int:
        """Claim and dispatch everything due now. Returns how many were dispatched."""
        items = self.due.claim(now_ms(), self.batch, QUEUED_LEASE_MS)
        self.dispatcher.kick_many(items)
        return len(items)

    def run(self) -> None:
        log.info("expiry scheduler started")
        while not self.stopping.is_set():
            try:
                if self.run_once() >= self.batch:
                    continue
                nxt = self.due.next_due_ms()
                wait = 5.0 if nxt is None else (nxt - now_ms()) / 1000
                if wait <= 0:
                    continue
                if wait > 0.25:
                    self.blocking.blpop([keys.due_wake()], timeout=min(wait - 0.15, 5.0))
                else:
                    self.stopping.wait(wait)
            except Exception:  # Redis away: keep trying, never die
                log.exception("scheduler loop error; retrying")
                self.stopping.wait(0.5)
        log.info("expiry scheduler stopped")

    def stop(self) -> None:
        self.stopping.set()
