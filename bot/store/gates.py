"""Deployment gates in Redis: each held deployment's record, the run index jobs are found by, webhook
replays, and what the platform was told (the `gate:<id>` due item tells it: workers/jobs/gate.py)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from bot.store import keys

#: A webhook delivery id is remembered this long (GitHub lets an admin redeliver for 3 days).
DELIVERY_TTL_S = 8 * 86400
#: Extra life of a gate record beyond the request retention (its request may be created late).
_SLACK_S = 86400

# A deployment is recorded once (the first delivery wins), with its watchdog due item: if no request
# or refusal is ever linked to it, the job rejects the deployment instead of leaving it waiting.
# KEYS: gate, due, due claims, due wake   ARGV: fields (JSON), ttl s, member, watchdog ms → 1 new, 0 known
_OPEN = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local flat = {}
for k, v in pairs(cjson.decode(ARGV[1])) do
  flat[#flat + 1] = k
  flat[#flat + 1] = v
end
redis.call('HSET', KEYS[1], unpack(flat))
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
redis.call('HDEL', KEYS[3], ARGV[3])
redis.call('RPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], -16, -1)
return 1
"""


@dataclass(frozen=True)
class GateRecord:
    """One held deployment. `target` is where the platform takes the answer (GitHub: installation,
    callback URL, environment; GitLab: project and deployment ids); `binding` the run it binds."""

    id: str
    platform: str
    pipeline: str
    place: str  # repository (GitHub) or project path (GitLab)
    environment: str
    opened_ms: int
    target: dict[str, Any] = field(default_factory=dict)
    binding: dict[str, str] = field(default_factory=dict)
    request_id: str | None = None
    refusal: str | None = None
    told: str | None = None  # approved / rejected / cancelled: nothing more to send
    told_comment: str | None = None
    attempts: int = 0  # failed attempts to tell the platform
    last_error: str | None = None
    unsure: bool = False  # the last attempt may have reached the platform (lost answer)
    gave_up: str | None = None  # the platform refused the answer for good

    @classmethod
    def from_hash(cls, gid: str, h: dict[str, str]) -> GateRecord:
        return cls(
            id=gid,
            platform=h.get("platform", ""),
            pipeline=h.get("pipeline", ""),
            place=h.get("place", ""),
            environment=h.get("environment", ""),
            opened_ms=int(h.get("opened_ms") or 0),
            target=json.loads(h.get("target") or "{}"),
            binding=json.loads(h.get("binding") or "{}"),
            request_id=h.get("request_id") or None,
            refusal=h.get("refusal") or None,
            told=h.get("told") or None,
            told_comment=h.get("told_comment") or None,
            attempts=int(h.get("attempts") or 0),
            last_error=h.get("last_error") or None,
            unsure=bool(h.get("unsure")),
            gave_up=h.get("gave_up") or None,
        )


def digest(parts: tuple[str, ...]) -> str:
    return hashlib.sha256(json.dumps(list(parts)).encode()).hexdigest()[:40]


def member(gate_id: str) -> str:
    """The gate's due-queue member: its job tells the platform (workers/jobs/gate.py)."""
    return f"gate:{gate_id}"


class GateStore:
    def __init__(self, redis: Redis, retention_s: int) -> None:
        self.r = redis
        self.ttl_s = retention_s + _SLACK_S
        self._open = redis.register_script(_OPEN)

    # ---------------------------------------------------------------- webhook deliveries

    def first_delivery(self, platform: str, delivery_id: str) -> bool:
        """True the first time a delivery id is seen; a replay gets False."""
        return bool(self.r.set(keys.gate_delivery(platform, delivery_id), "1", nx=True, ex=DELIVERY_TTL_S))

    def forget_delivery(self, platform: str, delivery_id: str) -> None:
        """The delivery failed on our side: the platform's redelivery must be handled, not refused."""
        self.r.delete(keys.gate_delivery(platform, delivery_id))

    # ---------------------------------------------------------------- records

    def open(
        self,
        gid: str,
        *,
        platform: str,
        pipeline: str,
        place: str,
        environment: str,
        target: dict[str, Any],
        binding: dict[str, str],
        now_ms: int,
        watchdog_ms: int,
    ) -> bool:
        """Record a held deployment (False: it is known already) and schedule its watchdog."""
        fields = {
            "platform": platform,
            "pipeline": pipeline,
            "place": place,
            "environment": environment,
            "opened_ms": str(now_ms),
            "target": json.dumps(target, sort_keys=True),
            "binding": json.dumps(binding, sort_keys=True),
        }
        return bool(
            self._open(
                keys=[keys.gate(gid), keys.due(), keys.due_claims(), keys.due_wake()],
                args=[json.dumps(fields), self.ttl_s, member(gid), now_ms + watchdog_ms],
            )
        )

    def get(self, gid: str) -> GateRecord | None:
        h = self.r.hgetall(keys.gate(gid))
        return GateRecord.from_hash(gid, h) if h else None

    def link(self, gid: str, request_id: str, run: tuple[str, ...] | None, group: tuple[str, ...] | None) -> None:
        """The gate's request exists: remember it, and index the run its job will name."""
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(keys.gate(gid), "request_id", request_id)
            if run is not None:
                pipe.set(keys.gate_run(digest(run)), gid, ex=self.ttl_s)
            if group is not None:
                pipe.sadd(keys.gate_run_group(digest(group)), gid)
                pipe.expire(keys.gate_run_group(digest(group)), self.ttl_s)
            pipe.execute()

    def refuse(self, gid: str, reason: str, now_ms: int) -> None:
        """No request will be made: the platform is told why, at once."""
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hset(keys.gate(gid), "refusal", reason[:500])
            pipe.zadd(keys.due(), {member(gid): now_ms})
            pipe.hdel(keys.due_claims(), member(gid))
            pipe.rpush(keys.due_wake(), "1")
            pipe.ltrim(keys.due_wake(), -16, -1)
            pipe.execute()

    def for_run(self, run: tuple[str, ...]) -> GateRecord | None:
        gid = self.r.get(keys.gate_run(digest(run)))
        return self.get(gid) if gid else None

    def in_group(self, group: tuple[str, ...]) -> list[GateRecord]:
        found = (self.get(g) for g in sorted(self.r.smembers(keys.gate_run_group(digest(group)))))
        return [g for g in found if g is not None]

    def of_request(self, request_id: str) -> GateRecord | None:
        """The gate a request was opened for (the request's `gate` field), if any."""
        gid = self.r.hget(keys.request(request_id), "gate")
        return self.get(gid) if gid else None

    # ---------------------------------------------------------------- what the platform heard

    def told(self, gid: str, state: str, comment: str, now_ms: int) -> None:
        self.r.hset(
            keys.gate(gid),
            mapping={"told": state, "told_comment": comment[:1000], "told_ms": str(now_ms), "unsure": ""},
        )

    def sending(self, gid: str) -> None:
        """About to send the decision: until an answer says otherwise it may have landed (a job
        that dies after the platform took it leaves this behind for its retry to read)."""
        self.r.hset(keys.gate(gid), "unsure", "1")

    def attempt_failed(self, gid: str, error: str, unsure: bool) -> int:
        with self.r.pipeline(transaction=True) as pipe:
            pipe.hincrby(keys.gate(gid), "attempts", 1)
            pipe.hset(keys.gate(gid), mapping={"last_error": error[:300], "unsure": "1" if unsure else ""})
            n, _ = pipe.execute()
        return int(n)

    def give_up(self, gid: str, error: str) -> None:
        self.r.hset(keys.gate(gid), mapping={"gave_up": error[:300], "unsure": ""})
