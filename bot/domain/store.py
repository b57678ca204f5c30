"""Atomic state transitions of access requests in Redis (one Lua script per transition).

Each script checks the current status and changes it in one step, so two approvers clicking
at once, or a click racing the pending timeout, yields exactly one outcome. A script that
starts work (a grant, a revoke, a Slack update) records it in the due queue in the same step,
so the work survives any crash; the caller then hands it to a worker at once (`Effects`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from redis import Redis

from bot.domain import keys
from bot.domain.requests import AccessRequest, Status

#: A claimed or freshly dispatched due item comes back due after this long, in case the job
#: carrying it was lost with its worker.
LEASE_MS = 10_000


class Effects(Protocol):
    """Hands due-queue items to workers at once (implemented with RQ in workers/)."""

    def kick(self, members: list[str], score: int) -> None: ...


class NoEffects:
    """Leave everything to the scheduler (tests, CLI tools)."""

    def kick(self, members: list[str], score: int) -> None:
        pass


# Shared Lua: queue items, publish the change, and give a final request its retention TTL.
_PRELUDE = """
local function queue(due, wake, member, score)
  redis.call('ZADD', due, score, member)
  redis.call('RPUSH', wake, '1')
  redis.call('LTRIM', wake, -16, -1)
end
local function changed(id)
  redis.call('PUBLISH', '""" + keys.changed_channel() + """', id)
end
-- once decided, a pending request's timers (timeout, reminder) have nothing left to do
local function undecided_timers_off(due, id)
  redis.call('ZREM', due, 'timeout:' .. id, 'remind:' .. id)
end
-- once a grant has ended, its timers (expiry, "expires soon" note) have nothing left to do
local function grant_timers_off(due, id)
  redis.call('ZREM', due, 'expire:' .. id, 'warn:' .. id)
end
-- nil while the request is pending (and, given `now`, inside its pending timeout); else the reply
local function not_pending(req, now)
  local st = redis.call('HGET', req, 'status')
  if not st then return {'missing'} end
  if st ~= 'pending' then return {'decided', st} end
  if now and tonumber(now) >= tonumber(redis.call('HGET', req, 'pending_until_ms')) then
    return {'decided', 'timed_out'}
  end
  return nil
end
-- after a request turned `approved`: its pending timers stop, its grant and message update queue
local function approval_complete(due, wake, id, lease)
  undecided_timers_off(due, id)
  queue(due, wake, 'grant:' .. id, lease)
  queue(due, wake, 'slack:' .. id, lease)
  changed(id)
end
local function finalize(req, apr, openidx, id, retention)
  redis.call('ZREM', openidx, id)
  redis.call('EXPIRE', req, retention)
  redis.call('EXPIRE', apr, retention)
end
"""

# The first Slack post is due at once and left to the scheduler, which batches bursts; the
# request also takes its place, in creation order, in its channel's queue of first posts
# (bot/slack/pacing.py).
# KEYS: req, idem, open, all, due, wake, channel outbox
# ARGV: id, created_ms, timeout_ms, now_ms, idem_ttl, field, value, ...
_CREATE = _PRELUDE + """
if KEYS[2] ~= '' then
  local existing = redis.call('GET', KEYS[2])
  if existing then return {0, existing} end
end
local id = ARGV[1]
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
redis.call('ZADD', KEYS[3], ARGV[2], id)
redis.call('ZADD', KEYS[4], ARGV[2], id)
queue(KEYS[5], KEYS[6], 'timeout:' .. id, ARGV[3])
queue(KEYS[5], KEYS[6], 'slack:' .. id, ARGV[4])
redis.call('ZADD', KEYS[7], 'NX', ARGV[2], id)
if KEYS[2] ~= '' then redis.call('SET', KEYS[2], id, 'EX', ARGV[5]) end
changed(id)
return {1, id}
"""

# KEYS: req, approvals, due, wake   ARGV: id, user, now_ms, lease_score
_APPROVE = _PRELUDE + """
local refused = not_pending(KEYS[1], ARGV[3])
if refused then return refused end
if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 0 then return {'duplicate'} end
local n = redis.call('HLEN', KEYS[2])
local id = ARGV[1]
if n >= tonumber(redis.call('HGET', KEYS[1], 'approvals_required')) then
  redis.call('HSET', KEYS[1], 'status', 'approved', 'decided_by', ARGV[2], 'decided_ms', ARGV[3])
  approval_complete(KEYS[3], KEYS[4], id, ARGV[4])
  return {'approved', n}
end
queue(KEYS[3], KEYS[4], 'slack:' .. id, ARGV[4])
changed(id)
return {'recorded', n}
"""

# A rule approves without a human, within its daily cap (counted here, atomically).
# KEYS: req, approvals, due, wake, counter   ARGV: id, now_ms, lease_score, cap, counter_ttl_s, rule
_AUTO_APPROVE = _PRELUDE + """
local refused = not_pending(KEYS[1], nil)
if refused then return refused end
local n = tonumber(redis.call('GET', KEYS[5]) or '0')
if n >= tonumber(ARGV[4]) then return {'capped', n} end
n = redis.call('INCR', KEYS[5])
redis.call('EXPIRE', KEYS[5], ARGV[5])
local id = ARGV[1]
redis.call('HSET', KEYS[1], 'status', 'approved', 'decided_by', 'auto', 'decided_ms', ARGV[2],
  'auto_rule', ARGV[6])
approval_complete(KEYS[3], KEYS[4], id, ARGV[3])
return {'approved', n}
"""

# One break-glass approver approves alone; the TTL is cut to the break-glass max.
# KEYS: req, approvals, due, wake   ARGV: id, user, now_ms, lease_score, max_ttl_s, justification
_BREAK_GLASS = _PRELUDE + """
local refused = not_pending(KEYS[1], ARGV[3])
if refused then return refused end
local id = ARGV[1]
local asked = tonumber(redis.call('HGET', KEYS[1], 'ttl_s'))
local ttl = math.min(asked, tonumber(ARGV[5]))
redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3])
redis.call('HSET', KEYS[1], 'status', 'approved', 'decided_by', ARGV[2], 'decided_ms', ARGV[3],
  'ttl_s', ttl, 'break_glass_by', ARGV[2], 'break_glass_justification', ARGV[6],
  'break_glass_asked_ttl_s', asked)
approval_complete(KEYS[3], KEYS[4], id, ARGV[4])
return {'approved', ttl}
"""

# A decision that ends a request before any grant: deny, time out, cancel.
# KEYS: req, approvals, open, due, wake
# ARGV: id, to_status, now_ms, lease_score, retention, allowed_from (csv), field, value, ...
_CLOSE = _PRELUDE + """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'missing'} end
local ok = false
for s in string.gmatch(ARGV[6], '[^,]+') do if s == st then ok = true end end
if not ok then return {'decided', st} end
local id = ARGV[1]
if ARGV[2] == 'timed_out' and tonumber(ARGV[3]) < tonumber(redis.call('HGET', KEYS[1], 'pending_until_ms')) then
  return {'early'}
end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'decided_ms', ARGV[3])
if #ARGV > 6 then redis.call('HSET', KEYS[1], unpack(ARGV, 7)) end
undecided_timers_off(KEYS[4], id)
queue(KEYS[4], KEYS[5], 'slack:' .. id, ARGV[4])
if st == 'approved' then
  -- a grant may be under way: make sure whatever it creates is cleaned up
  redis.call('ZREM', KEYS[4], 'grant:' .. id)
  queue(KEYS[4], KEYS[5], 'revoke:' .. id, ARGV[4])
end
finalize(KEYS[1], KEYS[2], KEYS[3], id, ARGV[5])
changed(id)
return {'ok', st}
"""

# KEYS: req, approvals, open, due, wake   ARGV: id, by, now_ms, lease_score, retention
_REVOKE = _PRELUDE + """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'missing'} end
if st ~= 'active' then return {'decided', st} end
local id = ARGV[1]
redis.call('HSET', KEYS[1], 'status', 'revoked', 'revoked_by', ARGV[2], 'revoked_ms', ARGV[3])
grant_timers_off(KEYS[4], id)
queue(KEYS[4], KEYS[5], 'revoke:' .. id, ARGV[4])
queue(KEYS[4], KEYS[5], 'slack:' .. id, ARGV[4])
finalize(KEYS[1], KEYS[2], KEYS[3], id, ARGV[5])
changed(id)
return {'ok', st}
"""

# KEYS: req, cred, due, wake   ARGV: id, issued_ms, expires_ms, cred_blob, cred_ttl_ms, lease_score
_ACTIVATE = _PRELUDE + """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return {'missing'} end
if st ~= 'approved' then return {'decided', st} end
local id = ARGV[1]
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[5])
redis.call('HSET', KEYS[1], 'status', 'active', 'issued_ms', ARGV[2], 'expires_ms', ARGV[3])
queue(KEYS[3], KEYS[4], 'expire:' .. id, ARGV[3])
queue(KEYS[3], KEYS[4], 'slack:' .. id, ARGV[6])
changed(id)
return {'ok', st}
"""

# KEYS: req, approvals, open, due, wake   ARGV: id, error, now_ms, lease_score, retention
_FAIL = _PRELUDE + """
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'approved' then return {'decided', st or 'missing'} end
local id = ARGV[1]
redis.call('HSET', KEYS[1], 'status', 'failed', 'error', ARGV[2], 'decided_ms', ARGV[3])
queue(KEYS[4], KEYS[5], 'revoke:' .. id, ARGV[4])
queue(KEYS[4], KEYS[5], 'slack:' .. id, ARGV[4])
finalize(KEYS[1], KEYS[2], KEYS[3], id, ARGV[5])
changed(id)
return {'ok', st}
"""

# After the backend revoke succeeded. Exactly one caller wins (revoke_done_ms set once).
# KEYS: req, approvals, open, cred, due, wake   ARGV: id, now_ms, lease_score, retention
_REVOKED = _PRELUDE + """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then redis.call('DEL', KEYS[4]) return {'missing'} end
if redis.call('HSETNX', KEYS[1], 'revoke_done_ms', ARGV[2]) == 0 then
  redis.call('DEL', KEYS[4])
  return {'again', st}
end
redis.call('DEL', KEYS[4])
local id = ARGV[1]
if st == 'active' then
  redis.call('HSET', KEYS[1], 'status', 'expired', 'revoked_by', 'expiry', 'revoked_ms', ARGV[2])
  grant_timers_off(KEYS[5], id)
  queue(KEYS[5], KEYS[6], 'slack:' .. id, ARGV[3])
  finalize(KEYS[1], KEYS[2], KEYS[3], id, ARGV[4])
  changed(id)
  return {'ok', 'expired', st}
end
changed(id)
return {'ok', st, st}
"""


@dataclass(frozen=True)
class Outcome:
    """What a transition did: `result` is 'ok'/'approved'/'recorded'/…; `status` the one it met."""

    result: str
    status: str | None = None
    count: int | None = None

    @property
    def ok(self) -> bool:
        return self.result in ("ok", "approved", "recorded")


class Store:
    def __init__(
        self, redis: Redis, retention_s: int = 30 * 86400, effects: Effects | None = None
    ) -> None:
        self.r = redis
        self.retention_s = retention_s
        self.effects: Effects = effects or NoEffects()
        self._create = redis.register_script(_CREATE)
        self._approve = redis.register_script(_APPROVE)
        self._auto_approve = redis.register_script(_AUTO_APPROVE)
        self._break_glass = redis.register_script(_BREAK_GLASS)
        self._close = redis.register_script(_CLOSE)
        self._revoke = redis.register_script(_REVOKE)
        self._activate = redis.register_script(_ACTIVATE)
        self._fail = redis.register_script(_FAIL)
        self._revoked = redis.register_script(_REVOKED)

    # ---------------------------------------------------------------- reads

    def get(self, request_id: str) -> AccessRequest | None:
        if not _valid_id(request_id):
            return None
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(keys.request(request_id))
        pipe.hgetall(keys.approvals(request_id))
        h, apr = pipe.execute()
        if not h or "status" not in h:
            return None
        return AccessRequest.from_hash(h, apr)

    def get_many(self, ids: list[str]) -> list[AccessRequest]:
        pipe = self.r.pipeline(transaction=False)
        for i in ids:
            pipe.hgetall(keys.request(i))
            pipe.hgetall(keys.approvals(i))
        res = pipe.execute()
        out = []
        for h, apr in zip(res[::2], res[1::2], strict=True):
            if h and "status" in h:
                out.append(AccessRequest.from_hash(h, apr))
        return out

    def open_ids(self, limit: int = 500) -> list[str]:
        """Not-yet-final requests, newest first."""
        return self.r.zrevrange(keys.open_requests(), 0, limit - 1)

    def credential_blob(self, request_id: str) -> str | None:
        return self.r.get(keys.credential(request_id))

    def fields(self, request_id: str, *names: str) -> dict[str, str]:
        """Request fields the AccessRequest model does not carry (break-glass, auto rule)."""
        if not _valid_id(request_id):
            return {}
        values = self.r.hmget(keys.request(request_id), list(names))
        return {n: v for n, v in zip(names, values, strict=True) if v}

    # ---------------------------------------------------------------- transitions

    def _kick(self, members: list[str], score: int) -> None:
        self.effects.kick(members, score)

    def create(
        self,
        req: AccessRequest,
        idempotency_key: str | None,
        now_ms: int,
        extra: dict[str, str] | None = None,
    ) -> tuple[bool, str]:
        flat: list[str] = []
        for k, v in {**req.to_hash(), **(extra or {})}.items():
            flat += [k, v]
        created, rid = self._create(
            keys=[
                keys.request(req.id),
                idempotency_key or "",
                keys.open_requests(),
                keys.all_requests(),
                keys.due(),
                keys.due_wake(),
                keys.channel_outbox(req.channel),
            ],
            args=[req.id, _ms(req.created_at), _ms(req.pending_until), now_ms, 86400, *flat],
        )
        return bool(created), rid

    def approve(self, request_id: str, user: str, now_ms: int) -> Outcome:
        lease = now_ms + LEASE_MS
        res = self._approve(
            keys=[keys.request(request_id), keys.approvals(request_id), keys.due(), keys.due_wake()],
            args=[request_id, user, now_ms, lease],
        )
        out = _outcome(res)
        if out.result == "approved":
            self._kick([f"grant:{request_id}", f"slack:{request_id}"], lease)
        elif out.result == "recorded":
            self._kick([f"slack:{request_id}"], lease)
        return out

    def auto_approve(
        self, request_id: str, counter_key: str, cap: int, rule: str, now_ms: int
    ) -> Outcome:
        """pending → approved by "auto", unless the daily counter already reached `cap`."""
        lease = now_ms + LEASE_MS
        res = self._auto_approve(
            keys=[
                keys.request(request_id),
                keys.approvals(request_id),
                keys.due(),
                keys.due_wake(),
                counter_key,
            ],
            args=[request_id, now_ms, lease, cap, 2 * 86400, rule],
        )
        out = _outcome(res)
        if out.result == "approved":
            self._kick([f"grant:{request_id}", f"slack:{request_id}"], lease)
        return out

    def break_glass(
        self, request_id: str, user: str, max_ttl_s: int, justification: str, now_ms: int
    ) -> Outcome:
        """pending → approved by one break-glass approver; `count` is the (capped) TTL in s."""
        lease = now_ms + LEASE_MS
        res = self._break_glass(
            keys=[keys.request(request_id), keys.approvals(request_id), keys.due(), keys.due_wake()],
            args=[request_id, user, now_ms, lease, max_ttl_s, justification],
        )
        out = _outcome(res)
        if out.result == "approved":
            self._kick([f"grant:{request_id}", f"slack:{request_id}"], lease)
        return out

    def close(
        self, request_id: str, to: Status, now_ms: int, allowed_from: set[Status], **fields: str
    ) -> Outcome:
        """pending/approved → denied | timed_out | cancelled."""
        lease = now_ms + LEASE_MS
        flat: list[str] = []
        for k, v in fields.items():
            flat += [k, v]
        res = self._close(
            keys=_ending_keys(request_id),
            args=[
                request_id,
                to.value,
                now_ms,
                lease,
                self.retention_s,
                ",".join(s.value for s in allowed_from),
                *flat,
            ],
        )
        out = _outcome(res)
        if out.ok:
            members = [f"slack:{request_id}"]
            if out.status == Status.APPROVED:
                members.append(f"revoke:{request_id}")
            self._kick(members, lease)
        return out

    def revoke(self, request_id: str, by: str, now_ms: int) -> Outcome:
        """active → revoked at once; the backend revoke follows in a job."""
        lease = now_ms + LEASE_MS
        res = self._revoke(
            keys=_ending_keys(request_id),
            args=[request_id, by, now_ms, lease, self.retention_s],
        )
        out = _outcome(res)
        if out.ok:
            self._kick([f"revoke:{request_id}", f"slack:{request_id}"], lease)
        return out

    def activate(
        self, request_id: str, issued_ms: int, expires_ms: int, blob: str, now_ms: int
    ) -> Outcome:
        lease = now_ms + LEASE_MS
        cred_ttl_ms = max(expires_ms - now_ms, 0) + self.retention_s * 1000
        res = self._activate(
            keys=[keys.request(request_id), keys.credential(request_id), keys.due(), keys.due_wake()],
            args=[request_id, issued_ms, expires_ms, blob, cred_ttl_ms, lease],
        )
        out = _outcome(res)
        if out.ok:
            self._kick([f"slack:{request_id}"], lease)
        return out

    def fail(self, request_id: str, error: str, now_ms: int) -> Outcome:
        lease = now_ms + LEASE_MS
        res = self._fail(
            keys=_ending_keys(request_id),
            args=[request_id, error[:500], now_ms, lease, self.retention_s],
        )
        out = _outcome(res)
        if out.ok:
            self._kick([f"revoke:{request_id}", f"slack:{request_id}"], lease)
        return out

    def mark_revoked(self, request_id: str, now_ms: int) -> Outcome:
        """Record that the backend revoke succeeded. `ok` for exactly one caller."""
        lease = now_ms + LEASE_MS
        res = self._revoked(
            keys=[
                keys.request(request_id),
                keys.approvals(request_id),
                keys.open_requests(),
                keys.credential(request_id),
                keys.due(),
                keys.due_wake(),
            ],
            args=[request_id, now_ms, lease, self.retention_s],
        )
        out = _outcome(res)
        if out.ok and out.status == Status.EXPIRED:
            self._kick([f"slack:{request_id}"], lease)
        return out

    def set_fields(self, request_id: str, **fields: str) -> None:
        if self.r.exists(keys.request(request_id)):
            self.r.hset(keys.request(request_id), mapping=fields)


def _ending_keys(request_id: str) -> list[str]:
    """KEYS of the scripts that may end a request: it, its approvals, the open index, due queue."""
    return [
        keys.request(request_id),
        keys.approvals(request_id),
        keys.open_requests(),
        keys.due(),
        keys.due_wake(),
    ]


def _outcome(res: list) -> Outcome:
    result = res[0] if isinstance(res[0], str) else res[0].decode()
    status = None
    count = None
    if len(res) > 1:
        if isinstance(res[1], int):
            count = res[1]
        else:
            status = res[1]
    return Outcome(result=result, status=status, count=count)


def _ms(dt) -> int:
    return int(round(dt.timestamp() * 1000))


def _valid_id(request_id: str) -> bool:
    if not isinstance(request_id, str):
        return False
    return 0 < len(request_id) <= 64 and all(c.isalnum() or c in "-_" for c in request_id)
