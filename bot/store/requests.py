"""Atomic state transitions of access requests in Redis (one Lua script per transition).

Each script checks the current status and changes it in one step, so two approvers clicking
at once, or a click racing the pending timeout, yields exactly one outcome. In the same step a
script records the work it starts in the due queue (a grant, a revoke, a Slack update), so the
work survives any crash, and pushes the transition's audit event onto the audit outbox, so no
state change exists without its record. The caller then hands kicked work to a worker at once
(`Effects`) and chains the outbox into the audit trail (`AuditLog.flush`).

Grants are fenced. The due queue gives every claim of an item a token; a grant job records its
intent (`begin_grant`, with its token) before it calls the backend, and only the current claim
holder may record the result (`finish_grant`). Whatever a grant may have created for a request
that is no longer active is revoked through the due queue like an expiry: retried with backoff,
alerted after JIT_REVOKE_ALERT_AFTER attempts, never dropped; `revoke_pending` shows it.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Protocol

from redis import Redis

from bot.core.model import APPROVAL_FIELD, AccessRequest, Status
from bot.store import keys
from bot.store.due import channel_post_member
from bot.store.pipelined import run_scripts

#: A freshly kicked due item comes back due after this long, in case the job carrying it was
#: lost with its worker.
LEASE_MS = 10_000

#: The one due item that brings expired grants' Slack messages up to date (paced, coalesced).
EXPIRED_UPDATES = "updates:expired"
#: An expiry's message update waits this long for others to coalesce with.
COALESCE_MS = 1000
#: An approval's message update waits this long: the grant that follows within milliseconds is
#: shown in the same update (one render and one chat.update, not two), and neither update runs
#: while the waiting pipeline fetches its credential. A grant's own update waits as long, for the
#: same reason. Slack itself takes longer than this to show an update.
DECISION_MESSAGE_MS = 200


class Effects(Protocol):
    """Hands due-queue items to workers at once (implemented with RQ in workers/)."""

    def kick(self, members: list[str], token: str) -> None: ...


class NoEffects:
    """Leave everything to the scheduler (tests, CLI tools)."""

    def kick(self, members: list[str], token: str) -> None:
        pass


class AuditOutbox(Protocol):
    """The audit trail's side of the contract (bot/store/audit.py)."""

    def event_body(
        self,
        event: str,
        *,
        request_id: str | None = None,
        action: str | None = None,
        actor: str | None = None,
        outcome: str = "ok",
        details: dict | None = None,
    ) -> str: ...

    def flush(self) -> int: ...

    def flush_soon(self) -> None: ...


# Every transition script gets the same first KEYS and ARGV, so the shared Lua below can use them:
# KEYS: 1 req, 2 approvals of a request an earlier version made (read only), 3 open index, 4 due,
#       5 due claims, 6 due wake, 7 audit outbox, 8 credential
# ARGV: 1 id, 2 now_ms, 3 lease score for kicked items, 4 retention s, 5 claim token for kicked
#       items, 6 first audit event body (JSON) or '', 7 second audit event body or ''
# Script-specific KEYS start at 9, ARGV at 8.
_COMMON_KEYS = 8
_COMMON_ARGS = 7

_PRELUDE = (
    """
local ID, NOW = ARGV[1], tonumber(ARGV[2])
local DECISION_MESSAGE_MS = """
    + str(DECISION_MESSAGE_MS)
    + """
local APPROVAL = '"""
    + APPROVAL_FIELD
    + """'
-- the request's approvals (user → ms) and their number: `approval:<user>` fields of its hash.
-- A request an earlier version made keeps them in a hash of their own (KEYS[2]): read, never
-- written, expired with the request (finalize).
local function approvals()
  local out, n = {}, 0
  local old = redis.call('HGETALL', KEYS[2])
  for i = 1, #old, 2 do out[old[i]] = old[i + 1] end
  local h = redis.call('HGETALL', KEYS[1])
  for i = 1, #h, 2 do
    if string.sub(h[i], 1, #APPROVAL) == APPROVAL then out[string.sub(h[i], #APPROVAL + 1)] = h[i + 1] end
  end
  for _ in pairs(out) do n = n + 1 end
  return out, n
end
-- due at `score`; a claim some job holds on the member is void from now on (new work)
local function schedule(member, score)
  redis.call('ZADD', KEYS[4], score, member)
  redis.call('HDEL', KEYS[5], member)
  redis.call('RPUSH', KEYS[6], '1')
  redis.call('LTRIM', KEYS[6], -16, -1)
end
-- due now and claimed for the job the caller enqueues at once (kick); the lease brings it back
-- if that job is lost
local KICKED = {}
local function kick(member)
  redis.call('ZADD', KEYS[4], ARGV[3], member)
  redis.call('HSET', KEYS[5], member, ARGV[5])
  KICKED[#KICKED + 1] = member
end
-- the request's Slack message owes its new state: its revision moves on (a `slack:` job that finds
-- the message showing this revision has nothing to render: workers/jobs/notify/message.py)
local function message_owed()
  redis.call('HINCRBY', KEYS[1], 'rev', 1)
  kick('slack:' .. ID)
end
-- the same, shown DECISION_MESSAGE_MS from now, with whatever follows by then (the grant after an
-- approval): due then, unless an update that has not started is due sooner anyway
local function message_owed_soon()
  redis.call('HINCRBY', KEYS[1], 'rev', 1)
  local m = 'slack:' .. ID
  local at = NOW + DECISION_MESSAGE_MS
  local due = redis.call('ZSCORE', KEYS[4], m)
  if due and tonumber(due) <= at and redis.call('HEXISTS', KEYS[5], m) == 0 then return end
  schedule(m, at)
end
-- every script answers {result, status or count or false, members kicked (comma-separated)}
local function reply(result, value)
  return {result, value or false, table.concat(KICKED, ',')}
end
local function unschedule(...)
  redis.call('ZREM', KEYS[4], ...)
  redis.call('HDEL', KEYS[5], ...)
end
local function audit(body, patch)
  if body == nil or body == '' then return end
  redis.call('RPUSH', KEYS[7], '{"body":' .. body .. ',"patch":' .. cjson.encode(patch or {}) .. '}')
end
local function changed()
  redis.call('PUBLISH', '"""
    + keys.changed_channel()
    + """', ID)
end
-- nil while the request is pending (and, given `now`, inside its pending timeout); else the reply
local function not_pending(now)
  local st = redis.call('HGET', KEYS[1], 'status')
  if not st then return reply('missing') end
  if st ~= 'pending' then return reply('decided', st) end
  if now and now >= tonumber(redis.call('HGET', KEYS[1], 'pending_until_ms')) then
    return reply('decided', 'timed_out')
  end
  return nil
end
-- once decided, a pending request's timers (timeout, reminder) have nothing left to do
local function undecided_timers_off()
  unschedule('timeout:' .. ID, 'remind:' .. ID)
end
-- once a grant has ended, its timers (expiry, "expires soon" note) have nothing left to do
local function grant_timers_off()
  unschedule('expire:' .. ID, 'warn:' .. ID)
end
-- a deployment GitHub or GitLab holds for this request hears how it ends (workers/jobs/gate.py)
local function gate_owed()
  local gate = redis.call('HGET', KEYS[1], 'gate')
  if gate then kick('gate:' .. gate) end
end
-- after a request turned `approved`: its pending timers stop, its grant and message update start
local function approval_complete()
  undecided_timers_off()
  kick('grant:' .. ID)
  message_owed_soon()
  gate_owed()
  changed()
end
-- whatever a grant issued, or may have issued, must be revoked: through the due queue, like an
-- expiry (retried with backoff, alerted, never dropped)
local function revoke_owed()
  redis.call('HSET', KEYS[1], 'revoke_pending', '1')
  kick('revoke:' .. ID)
end
-- an approved request will not be granted after all: stop its grant job, and revoke whatever an
-- earlier attempt may have issued. A grant job calling the backend now records what it issued
-- when it ends and queues the revoke (or, if it died, its item comes back and does the same).
local function stop_grant()
  if redis.call('HEXISTS', KEYS[1], 'grant_inflight') == 1 then
    redis.call('HSET', KEYS[1], 'revoke_pending', '1')
  else
    unschedule('grant:' .. ID)
    if redis.call('HEXISTS', KEYS[1], 'grant_attempted') == 1 then revoke_owed() end
  end
end
local function finalize()
  redis.call('ZREM', KEYS[3], ID)
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
  -- keys.request_token: a sealed token an earlier version kept (none are written now)
  redis.call('EXPIRE', KEYS[1] .. ':token', ARGV[4])
end
"""
)

# The request takes its place, in creation order, in its channel's queue of first posts, and the
# channel's poster is due (or its own `slack:` job, when it may owe more: see Store.create).
# KEYS: 9 idempotency key or '', 10 all-requests index, 11 channel outbox
# ARGV: 8 fields (JSON object of strings), 9 created_ms, 10 timeout due ms, 11 idem ttl s,
#       12 idempotency value, 13 reminder due ms or '' (then a `slack:` job instead), 14 the
#       channel's poster (due member)
_CREATE = (
    _PRELUDE
    + """
if KEYS[9] ~= '' then
  local existing = redis.call('GET', KEYS[9])
  if existing then return reply('exists', existing) end
end
local flat = {}
for k, v in pairs(cjson.decode(ARGV[8])) do
  flat[#flat + 1] = k
  flat[#flat + 1] = v
end
redis.call('HSET', KEYS[1], unpack(flat))
redis.call('ZADD', KEYS[3], ARGV[9], ID)
redis.call('ZADD', KEYS[10], ARGV[9], ID)
schedule('timeout:' .. ID, ARGV[10])
if ARGV[13] ~= '' then
  -- it owes nothing yet but its reminder and its first post: no job of its own, its channel's
  -- poster posts it (the outbox entry below)
  schedule('remind:' .. ID, ARGV[13])
  redis.call('ZADD', KEYS[4], 'NX', NOW, ARGV[14])
else
  schedule('slack:' .. ID, NOW)
end
redis.call('ZADD', KEYS[11], 'NX', ARGV[9], ID)
if KEYS[9] ~= '' then redis.call('SET', KEYS[9], ARGV[12], 'EX', ARGV[11]) end
audit(ARGV[6])
changed()
return reply('ok', ID)
"""
)

# One click. The caller matched every approval, the clicker's last, to the request's rules
# (bot/core/policy/matching.py); this script re-checks, atomically, what makes that matching true
# now: the clicker has not approved yet; the approvals it matched are exactly those recorded (else
# another click came in between: 'stale', and the caller matches again); nobody counts twice, no
# rule holds more than it needs, and only recorded approvers and the clicker count, the clicker
# somewhere. Approved once every rule is full.
# ARGV: 8 user, 9 rules (JSON list of [rule, count, [people counted]]), 10 approvers the caller
#       saw recorded (JSON list), 11 the clicker's rule, 12 on-call schedules the clicker is on
#       call for (JSON list), 13 the change window the approval came in ('' when the action has
#       none). Which rule each approver counts toward is not kept on the request: it is matched
#       again on every click, and the final matching is in the `request.approved` audit event.
_APPROVE = (
    _PRELUDE
    + """
local refused = not_pending(NOW)
if refused then return reply(refused[1], refused[2]) end
local USER = ARGV[8]
local given, recorded = approvals()
if given[USER] then return reply('duplicate') end
local seen = cjson.decode(ARGV[10])
if recorded ~= #seen then return reply('stale') end
for _, u in ipairs(seen) do
  if not given[u] then return reply('stale') end
end
local once, counted, required, mine, full = {}, 0, 0, false, true
for _, rule in ipairs(cjson.decode(ARGV[9])) do
  local need, people = tonumber(rule[2]), rule[3]
  required = required + need
  if #people > need then return reply('invalid') end
  if #people < need then full = false end
  for _, u in ipairs(people) do
    if once[u] then return reply('invalid') end
    once[u] = true
    counted = counted + 1
    if u == USER then
      mine = true
    elseif not given[u] then
      return reply('invalid')
    end
  end
end
if not mine then return reply('invalid') end
redis.call('HSET', KEYS[1], APPROVAL .. USER, ARGV[2])
local oncall = cjson.decode(ARGV[12])
if #oncall > 0 then
  local kept = cjson.decode(redis.call('HGET', KEYS[1], 'approved_oncall') or '{}')
  kept[USER] = oncall
  redis.call('HSET', KEYS[1], 'approved_oncall', cjson.encode(kept))
end
audit(ARGV[6], {approvals = counted, required = required, rule = ARGV[11]})
if full then
  redis.call('HSET', KEYS[1], 'status', 'approved', 'decided_by', USER, 'decided_ms', ARGV[2],
    'approvals_required', required, 'rule', ARGV[11])
  if ARGV[13] ~= '' then redis.call('HSET', KEYS[1], 'window', ARGV[13]) end
  audit(ARGV[7])
  approval_complete()
  return reply('approved', counted)
end
message_owed()
changed()
return reply('recorded', counted)
"""
)

# A rule approves without a human, within its daily cap (counted here, atomically).
# KEYS: 9 counter   ARGV: 8 cap, 9 counter ttl s, 10 rule
_AUTO_APPROVE = (
    _PRELUDE
    + """
local refused = not_pending(nil)
if refused then return reply(refused[1], refused[2]) end
local n = tonumber(redis.call('GET', KEYS[9]) or '0')
if n >= tonumber(ARGV[8]) then return reply('capped', n) end
n = redis.call('INCR', KEYS[9])
redis.call('EXPIRE', KEYS[9], ARGV[9])
redis.call('HSET', KEYS[1], 'status', 'approved', 'decided_by', 'auto', 'decided_ms', ARGV[2],
  'auto_rule', ARGV[10], 'rule', ARGV[10])
audit(ARGV[6], {count_today = n})
approval_complete()
return reply('approved', n)
"""
)

# One break-glass approver approves alone; the TTL is cut to the break-glass max; the security
# channel's alert is owed from this moment (workers/jobs/notify/notices.py).
# KEYS: 9 undelivered alerts   ARGV: 8 user, 9 max ttl s, 10 justification, 11 the rule (policy path)
_BREAK_GLASS = (
    _PRELUDE
    + """
local refused = not_pending(NOW)
if refused then return reply(refused[1], refused[2]) end
local asked = tonumber(redis.call('HGET', KEYS[1], 'ttl_s'))
local ttl = math.min(asked, tonumber(ARGV[9]))
if not approvals()[ARGV[8]] then redis.call('HSET', KEYS[1], APPROVAL .. ARGV[8], ARGV[2]) end
redis.call('HSET', KEYS[1], 'status', 'approved', 'decided_by', ARGV[8], 'decided_ms', ARGV[2],
  'ttl_s', ttl, 'break_glass_by', ARGV[8], 'break_glass_justification', ARGV[10],
  'break_glass_asked_ttl_s', asked, 'rule', ARGV[11])
audit(ARGV[6], {ttl_seconds = ttl})
approval_complete()
kick('bgalert:' .. ID)
redis.call('ZADD', KEYS[9], 'NX', ARGV[2], 'bgalert:' .. ID)
return reply('approved', ttl)
"""
)

# A decision that ends a request before any grant: deny, time out, cancel.
# ARGV: 8 to_status, 9 allowed_from (csv), 10 extra fields (JSON object of strings)
_CLOSE = (
    _PRELUDE
    + """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return reply('missing') end
local ok = false
for s in string.gmatch(ARGV[9], '[^,]+') do if s == st then ok = true end end
if not ok then return reply('decided', st) end
if st == 'pending' then
  local up = NOW >= tonumber(redis.call('HGET', KEYS[1], 'pending_until_ms'))
  if ARGV[8] == 'timed_out' and not up then return reply('early') end
  -- once its time is up a pending request can only time out, whatever comes first
  if ARGV[8] ~= 'timed_out' and up then return reply('decided', 'timed_out') end
end
redis.call('HSET', KEYS[1], 'status', ARGV[8], 'decided_ms', ARGV[2])
for k, v in pairs(cjson.decode(ARGV[10])) do redis.call('HSET', KEYS[1], k, v) end
undecided_timers_off()
if st == 'approved' then
  stop_grant()
end
message_owed()
gate_owed()
finalize()
audit(ARGV[6])
changed()
return reply('ok', st)
"""
)

# active → revoked by an approver or the pipeline; the backend revoke follows in a job.
# ARGV: 8 by
_REVOKE = (
    _PRELUDE
    + """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return reply('missing') end
if st ~= 'active' then return reply('decided', st) end
redis.call('HSET', KEYS[1], 'status', 'revoked', 'revoked_by', ARGV[8], 'revoked_ms', ARGV[2])
grant_timers_off()
revoke_owed()
message_owed()
finalize()
audit(ARGV[6])
changed()
return reply('ok', st)
"""
)

# A grant job records its intent before it calls the backend; only the current claim of the
# request's `grant:` item may. A job whose request is no longer approved settles instead: if an
# earlier attempt may have issued something, that is revoked.
# KEYS: 9 claim token of grant:<id>   ARGV: 8 this job's claim token
_BEGIN_GRANT = (
    _PRELUDE
    + """
if redis.call('HGET', KEYS[5], 'grant:' .. ID) ~= ARGV[8] then return reply('stale') end
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return reply('missing') end
if st == 'approved' then
  redis.call('HSET', KEYS[1], 'grant_inflight', ARGV[8], 'grant_attempted', '1')
  return reply('ok')
end
if redis.call('HEXISTS', KEYS[1], 'grant_inflight') == 1 then
  -- the attempt that recorded this intent never came back: whatever it created goes
  redis.call('HDEL', KEYS[1], 'grant_inflight', 'revoke_done_ms')
  revoke_owed()
  changed()
  return reply('settled', st)
end
return reply('decided', st)
"""
)

# The backend answered. The current claim holder records the credential: approved → active, or,
# when the request ended while the backend worked, the credential is kept (encrypted) only to be
# revoked through the due queue at once. An active grant joins its pipeline's held grants of the
# action (KEYS[9], '' for none), where the same pipeline asking again finds it.
# KEYS: 9 held grants set or ''
# ARGV: 8 claim token, 9 issued_ms, 10 expires_ms, 11 sealed credential, 12 credential ttl ms
_FINISH_GRANT = (
    _PRELUDE
    + """
if redis.call('HGET', KEYS[5], 'grant:' .. ID) ~= ARGV[8]
  or redis.call('HGET', KEYS[1], 'grant_inflight') ~= ARGV[8] then
  return reply('stale')
end
local st = redis.call('HGET', KEYS[1], 'status')
redis.call('HDEL', KEYS[1], 'grant_inflight')
redis.call('SET', KEYS[8], ARGV[11], 'PX', ARGV[12])
if st == 'approved' then
  redis.call('HSET', KEYS[1], 'status', 'active', 'issued_ms', ARGV[9], 'expires_ms', ARGV[10])
  if KEYS[9] ~= '' then
    redis.call('SADD', KEYS[9], ID)
    redis.call('EXPIRE', KEYS[9], ARGV[4])
  end
  schedule('expire:' .. ID, ARGV[10])
  message_owed_soon()
  gate_owed()
  audit(ARGV[6])
  changed()
  return reply('ok', st)
end
redis.call('HSET', KEYS[1], 'issued_ms', ARGV[9])
redis.call('HDEL', KEYS[1], 'revoke_done_ms')
revoke_owed()
message_owed()
audit(ARGV[7])
changed()
return reply('late', st)
"""
)

# A grant attempt failed; the attempt is over (nothing in flight), but it may have created part
# of an identity: a request that ended while it ran owes a revoke now; one that ends later owes
# it then (`grant_attempted`).
# ARGV: 8 claim token
_GRANT_ATTEMPT_FAILED = (
    _PRELUDE
    + """
if redis.call('HGET', KEYS[1], 'grant_inflight') ~= ARGV[8] then return reply('stale') end
redis.call('HDEL', KEYS[1], 'grant_inflight')
local st = redis.call('HGET', KEYS[1], 'status')
if st and st ~= 'approved' then
  revoke_owed()
  changed()
end
return reply('ok', st)
"""
)

# The grant kept failing (or may not be issued any more): approved → failed.
# ARGV: 8 error
_FAIL = (
    _PRELUDE
    + """
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'approved' then return reply('decided', st or 'missing') end
redis.call('HSET', KEYS[1], 'status', 'failed', 'error', ARGV[8], 'decided_ms', ARGV[2])
stop_grant()
message_owed()
gate_owed()
finalize()
audit(ARGV[6])
changed()
return reply('ok', st)
"""
)

# After the backend revoke succeeded. Exactly one caller records it (revoke_done_ms set once).
# While a grant is in flight nothing is recorded: its end queues another revoke.
# An expiry does not kick its own Slack update: it joins the expired-messages set, and the one
# `updates:expired` job (due in ARGV[8] ms unless already queued) updates messages at chat.update's
# pace, with a digest per channel in a storm (workers/jobs/notify/expiries.py). So revoking stays
# Redis work only, whatever Slack allows.
# KEYS: 9 expired messages   ARGV: 8 coalescing delay ms
_REVOKED = (
    _PRELUDE
    + """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then redis.call('DEL', KEYS[8]) return reply('missing') end
if redis.call('HEXISTS', KEYS[1], 'grant_inflight') == 1 then return reply('inflight', st) end
redis.call('DEL', KEYS[8])
redis.call('HDEL', KEYS[1], 'revoke_pending')
if redis.call('HSETNX', KEYS[1], 'revoke_done_ms', ARGV[2]) == 0 then return reply('again', st) end
local final = st
if st == 'active' then
  final = 'expired'
  redis.call('HSET', KEYS[1], 'status', 'expired', 'revoked_by', 'expiry', 'revoked_ms', ARGV[2])
  grant_timers_off()
  finalize()
  redis.call('ZADD', KEYS[9], 'NX', NOW, (redis.call('HGET', KEYS[1], 'channel') or '') .. ':' .. ID)
  if redis.call('ZADD', KEYS[4], 'NX', NOW + tonumber(ARGV[8]), '"""
    + EXPIRED_UPDATES
    + """') == 1 then
    redis.call('RPUSH', KEYS[6], '1')
    redis.call('LTRIM', KEYS[6], -16, -1)
  end
else
  message_owed()
end
audit(ARGV[6], {status = final})
changed()
return reply('ok', final)
"""
)

# The session record of a grant that has ended (revoked or expired), once: stored sealed beside the
# request with the request's remaining TTL, audited (the transcript's digest only), and the
# thread's "Used … by run …" note owed (`session:` due item).
# KEYS: 9 session key   ARGV: 8 sealed record
_SESSION = (
    _PRELUDE
    + """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return reply('missing') end
if (st ~= 'revoked' and st ~= 'expired') or redis.call('HEXISTS', KEYS[1], 'issued_ms') == 0 then
  return reply('not_ended', st)
end
if redis.call('EXISTS', KEYS[9]) == 1 then return reply('exists', st) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 then ttl = tonumber(ARGV[4]) * 1000 end
redis.call('SET', KEYS[9], ARGV[8], 'PX', ttl)
redis.call('HSET', KEYS[1], 'session_ms', ARGV[2])
kick('session:' .. ID)
audit(ARGV[6])
changed()
return reply('ok', st)
"""
)


# Extensions (bot/grant/extend.py). An extension adds time to an active grant's window: its
# expiry and its scheduled revocation (`expire:`) move together here, only ever later, and the
# "expires soon" note is re-armed; the credential is re-issued by a job (`reissue:`) when its
# backend needs it. The caller read the expiry it extends (compare-and-set: 'stale' → read again).
# Every extension script, KEYS: 9 the extension's approvals (hash user → ms)
_EXTEND_LIB = (
    _PRELUDE
    + """
-- nil, or the reply refusing to extend the grant expiring at `old` by `add` ms (within `max_total`)
local function not_extendable(old, add, max_total)
  local st = redis.call('HGET', KEYS[1], 'status')
  if not st then return reply('missing') end
  if st ~= 'active' then return reply('not_active', st) end
  local exp = tonumber(redis.call('HGET', KEYS[1], 'expires_ms'))
  if NOW >= exp then return reply('not_active', 'expired') end
  if exp ~= old then return reply('stale') end
  if add <= 0 then return reply('invalid') end
  if old + add - tonumber(redis.call('HGET', KEYS[1], 'issued_ms')) > max_total then return reply('over') end
  return nil
end
local function close_round()
  redis.call('HDEL', KEYS[1], 'ext_round', 'ext_add_ms', 'ext_reason', 'ext_by', 'ext_required', 'ext_asked_ms')
  redis.call('DEL', KEYS[9])
end
-- the window ends `add` ms later: expiry and revocation move together, the warning is owed again
local function apply_extension(old, add, by, body)
  local new = old + add
  redis.call('HSET', KEYS[1], 'expires_ms', new, 'extended_by', by, 'extended_ms', ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'extensions', 1)
  schedule('expire:' .. ID, new)
  unschedule('warn:' .. ID)
  redis.call('HDEL', KEYS[1], 'warned_ms')
  close_round()
  kick('reissue:' .. ID)
  message_owed()
  audit(body)
  changed()
  return new
end
"""
)

# Applies at once (no approvals needed).
# ARGV: 8 expiry read by the caller (ms), 9 ms to add, 10 max total window ms, 11 by
_EXTEND = (
    _EXTEND_LIB
    + """
local old, add = tonumber(ARGV[8]), tonumber(ARGV[9])
local refused = not_extendable(old, add, tonumber(ARGV[10]))
if refused then return refused end
return reply('ok', apply_extension(old, add, ARGV[11], ARGV[6]))
"""
)

# Opens an approval round on the request's message (one at a time).
# ARGV: 8 expiry read, 9 ms to add, 10 max total ms, 11 by, 12 reason, 13 approvals required,
#       14 round id
_EXTEND_ASK = (
    _EXTEND_LIB
    + """
local old, add = tonumber(ARGV[8]), tonumber(ARGV[9])
local refused = not_extendable(old, add, tonumber(ARGV[10]))
if refused then return refused end
local open = redis.call('HGET', KEYS[1], 'ext_round')
if open then
  if redis.call('HGET', KEYS[1], 'ext_add_ms') == ARGV[9] then return reply('open', open) end
  return reply('busy', open)
end
redis.call('DEL', KEYS[9])
redis.call('HSET', KEYS[1], 'ext_round', ARGV[14], 'ext_add_ms', ARGV[9], 'ext_by', ARGV[11],
  'ext_reason', ARGV[12], 'ext_required', ARGV[13], 'ext_asked_ms', ARGV[2])
message_owed()
audit(ARGV[6])
changed()
return reply('ok', ARGV[14])
"""
)

# One approval of the open round; the last one applies the extension.
# ARGV: 8 expiry read, 9 max total ms, 10 user, 11 round id the caller saw
_EXTEND_APPROVE = (
    _EXTEND_LIB
    + """
local round = redis.call('HGET', KEYS[1], 'ext_round')
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return reply('missing') end
if st ~= 'active' then return reply('not_active', st) end
if not round then return reply('no_round') end
if round ~= ARGV[11] then return reply('stale') end
if redis.call('HEXISTS', KEYS[9], ARGV[10]) == 1 then return reply('duplicate') end
local old, add = tonumber(ARGV[8]), tonumber(redis.call('HGET', KEYS[1], 'ext_add_ms'))
local refused = not_extendable(old, add, tonumber(ARGV[9]))
if refused then return refused end
redis.call('HSET', KEYS[9], ARGV[10], ARGV[2])
redis.call('EXPIRE', KEYS[9], ARGV[4])
local count = redis.call('HLEN', KEYS[9])
audit(ARGV[6], {approvals = count})
if count >= tonumber(redis.call('HGET', KEYS[1], 'ext_required')) then
  apply_extension(old, add, redis.call('HGET', KEYS[1], 'ext_by'), ARGV[7])
  return reply('approved', count)
end
message_owed()
changed()
return reply('recorded', count)
"""
)

# The backend re-issued the credential for the window ending at ARGV[8]: kept while that is still
# the active grant's window (else a later extension's job re-issues again).
# ARGV: 8 expiry it was issued for (ms), 9 sealed credential, 10 credential ttl ms
_REISSUED = (
    _PRELUDE
    + """
if redis.call('HGET', KEYS[1], 'status') ~= 'active' then return reply('decided') end
if redis.call('HGET', KEYS[1], 'expires_ms') ~= ARGV[8] then return reply('stale') end
if redis.call('EXISTS', KEYS[8]) == 0 then return reply('decided') end
redis.call('SET', KEYS[8], ARGV[9], 'PX', ARGV[10])
audit(ARGV[6])
changed()
return reply('ok')
"""
)


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
        self,
        redis: Redis,
        audit: AuditOutbox,
        retention_s: int = 30 * 86400,
        effects: Effects | None = None,
    ) -> None:
        self.r = redis
        self.audit = audit
        self.retention_s = retention_s
        self.effects: Effects = effects or NoEffects()
        # never recreates a request hash that is gone (it would have no TTL)
        self._mark_paged = redis.register_script(
            "if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end return redis.call('HSETNX', KEYS[1], ARGV[1], '1')"
        )
        self._scripts = {
            name: redis.register_script(src)
            for name, src in {
                "create": _CREATE,
                "approve": _APPROVE,
                "auto_approve": _AUTO_APPROVE,
                "break_glass": _BREAK_GLASS,
                "close": _CLOSE,
                "revoke": _REVOKE,
                "begin_grant": _BEGIN_GRANT,
                "finish_grant": _FINISH_GRANT,
                "grant_attempt_failed": _GRANT_ATTEMPT_FAILED,
                "fail": _FAIL,
                "revoked": _REVOKED,
                "extend": _EXTEND,
                "extend_ask": _EXTEND_ASK,
                "extend_approve": _EXTEND_APPROVE,
                "reissued": _REISSUED,
                "session": _SESSION,
            }.items()
        }

    # ---------------------------------------------------------------- reads

    def get(self, request_id: str) -> AccessRequest | None:
        if not valid_id(request_id):
            return None
        pipe = self.r.pipeline(transaction=False)
        pipe.hgetall(keys.request(request_id))
        pipe.hgetall(keys.approvals(request_id))  # where earlier versions kept approvals
        h, apr = pipe.execute()
        if not h or "status" not in h:
            return None
        return AccessRequest.from_hash(h, apr)

    def get_many(self, ids: list[str]) -> list[AccessRequest]:
        pipe = self.r.pipeline(transaction=False)
        _read_many(pipe, ids)
        return _requests_of(pipe.execute())

    def get_many_with_credentials(self, ids: list[str]) -> tuple[list[AccessRequest], list[str | None]]:
        """`get_many` and `credential_blobs` in one round trip (an expiry batch's one read)."""
        if not ids:
            return [], []
        pipe = self.r.pipeline(transaction=False)
        _read_many(pipe, ids)
        pipe.mget([keys.credential(i) for i in ids])
        *res, blobs = pipe.execute()
        return _requests_of(res), blobs

    def open_ids(self, limit: int = 500) -> list[str]:
        """Not-yet-final requests, newest first."""
        return self.r.zrevrange(keys.open_requests(), 0, limit - 1)

    def active_for(self, pipeline: str, action: str) -> list[AccessRequest]:
        """The active grants of `action` that `pipeline` holds; the ended ones leave the set."""
        held = keys.held_grants(pipeline, action)
        ids = sorted(self.r.smembers(held))
        found = {req.id: req for req in self.get_many(ids)}
        ended = [i for i in ids if i not in found or found[i].status != Status.ACTIVE]
        if ended:
            self.r.srem(held, *ended)
        return [req for req in found.values() if req.status == Status.ACTIVE]

    def request_token_blob(self, request_id: str) -> str:
        """The sealed request_token an earlier version kept for a request ('' when none: requests
        made now keep none, their token is made again from the id). Read for requests still in
        Redis from before an upgrade: in their own key, or, earliest, in their hash."""
        own = self.r.get(keys.request_token(request_id))
        return own or self.r.hget(keys.request(request_id), "request_token_enc") or ""

    def credential_blob(self, request_id: str) -> str | None:
        return self.r.get(keys.credential(request_id))

    def fields(self, request_id: str, *names: str) -> dict[str, str]:
        """Request fields the AccessRequest model does not carry (break-glass, auto rule)."""
        if not valid_id(request_id):
            return {}
        values = self.r.hmget(keys.request(request_id), list(names))
        return {n: v for n, v in zip(names, values, strict=True) if v}

    def fields_of(self, req: AccessRequest, *names: str) -> dict[str, str]:
        """`fields`, taken from the hash `req` was read from when it was read from Redis (the same
        snapshot as the rest of `req`, and no round trip); read now for a request built in memory."""
        if not req.fields:
            return self.fields(req.id, *names)
        return {n: v for n in names if (v := req.fields.get(n))}

    # ---------------------------------------------------------------- the one way to run a script

    def _run(
        self,
        script: str,
        request_id: str,
        now_ms: int,
        *,
        events: tuple[str, str] = ("", ""),
        keys_extra: list[str] | None = None,
        args_extra: list[object] | None = None,
    ) -> list:
        token = secrets.token_hex(8)
        res = self._scripts[script](
            keys=self._keys(request_id, keys_extra), args=self._args(request_id, now_ms, token, events, args_extra)
        )
        self._after(res, token)
        if any(events):
            self.audit.flush_soon()
        return res

    def _keys(self, request_id: str, keys_extra: list[str] | None) -> list[str]:
        return [
            keys.request(request_id),
            keys.approvals(request_id),
            keys.open_requests(),
            keys.due(),
            keys.due_claims(),
            keys.due_wake(),
            keys.audit_outbox(),
            keys.credential(request_id),
            *(keys_extra or []),
        ]

    def _args(
        self, request_id: str, now_ms: int, token: str, events: tuple[str, str], args_extra: list[object] | None
    ) -> list[object]:
        return [
            request_id,
            now_ms,
            now_ms + LEASE_MS,
            self.retention_s,
            token,
            events[0],
            events[1],
            *(args_extra or []),
        ]

    def _after(self, res: list, token: str) -> None:
        kicked = [m for m in (res[2] or "").split(",") if m]
        if kicked:
            self.effects.kick(kicked, token)

    # ---------------------------------------------------------------- transitions

    def create(
        self,
        req: AccessRequest,
        idempotency: tuple[str, str] | None,
        now_ms: int,
        event: str,
        extra: dict[str, str] | None = None,
        *,
        remind_ms: int | None = None,
    ) -> tuple[bool, str]:
        """Store a new request with its creation event. With `idempotency` = (key, fingerprint),
        a key already used returns (False, "<request id>|<fingerprint>"; keys an earlier version
        wrote end in "|<sealed request token>").

        `remind_ms`: the caller knows the request owes nothing at creation but its reminder (due
        then) and its first post (its channel's poster makes it), so no `slack:` job of its own is
        needed; without it, that job works out what the request owes (on-call pages, say)."""
        idem_key, fingerprint = idempotency or ("", "")
        # Compact: no empty fields — a hash whose values all fit Redis's listpack limit (64 bytes
        # by default) takes a third of the memory. No request token either: only its hash is kept.
        fields = {k: v for k, v in {**req.to_hash(), **(extra or {})}.items() if v != ""}
        idem_value = f"{req.id}|{fingerprint}"
        res = self._run(
            "create",
            req.id,
            now_ms,
            events=(event, ""),
            keys_extra=[idem_key, keys.all_requests(), keys.channel_outbox(req.channel)],
            args_extra=[
                json.dumps(fields),
                _ms(req.created_at),
                _ms(req.pending_until),
                86400,
                idem_value,
                "" if remind_ms is None else remind_ms,
                channel_post_member(req.channel),
            ],
        )
        return res[0] == "ok", res[1]

    def approve(
        self,
        request_id: str,
        user: str,
        now_ms: int,
        *,
        rules: list[tuple[str, int, list[str]]],
        seen: list[str],
        rule: str,
        oncall: list[str],
        given: str,
        approved: str,
        window: str | None = None,
    ) -> Outcome:
        """Record `user`'s approval as matched in `rules` ((rule, count, people counted) each),
        computed against the approvals `seen`: 'approved' when every rule is full, 'recorded',
        'duplicate', 'stale' (the approvals changed meanwhile: match again), or 'invalid' (the
        matching breaks a rule: nothing recorded). `rule`: where the clicker counts; `oncall`: the
        schedules they are on call for, kept with their approval."""
        return _outcome(
            self._run(
                "approve",
                request_id,
                now_ms,
                events=(given, approved),
                args_extra=[
                    user,
                    json.dumps([[r, n, people] for r, n, people in rules]),
                    json.dumps(seen),
                    rule,
                    json.dumps(oncall),
                    window or "",
                ],
            )
        )

    def auto_approve(self, request_id: str, counter_key: str, cap: int, rule: str, now_ms: int, event: str) -> Outcome:
        """pending → approved by "auto", unless the daily counter already reached `cap`."""
        return _outcome(
            self._run(
                "auto_approve",
                request_id,
                now_ms,
                events=(event, ""),
                keys_extra=[counter_key],
                args_extra=[cap, 2 * 86400, rule],
            )
        )

    def break_glass(
        self,
        request_id: str,
        user: str,
        max_ttl_s: int,
        justification: str,
        now_ms: int,
        event: str,
        rule: str = "break_glass",
    ) -> Outcome:
        """pending → approved by one break-glass approver; `count` is the (capped) TTL in s."""
        return _outcome(
            self._run(
                "break_glass",
                request_id,
                now_ms,
                events=(event, ""),
                keys_extra=[keys.undelivered_alerts()],
                args_extra=[user, max_ttl_s, justification, rule],
            )
        )

    def close(
        self,
        request_id: str,
        to: Status,
        now_ms: int,
        allowed_from: set[Status],
        event: str,
        **fields: str,
    ) -> Outcome:
        """pending/approved → denied | timed_out | cancelled."""
        return _outcome(
            self._run(
                "close",
                request_id,
                now_ms,
                events=(event, ""),
                args_extra=[to.value, ",".join(s.value for s in allowed_from), json.dumps(fields)],
            )
        )

    def revoke(self, request_id: str, by: str, now_ms: int, event: str) -> Outcome:
        """active → revoked at once; the backend revoke follows in a job."""
        return _outcome(self._run("revoke", request_id, now_ms, events=(event, ""), args_extra=[by]))

    def begin_grant(self, request_id: str, token: str, now_ms: int) -> Outcome:
        """Record the intent to grant under the claim `token`: 'ok' to call the backend;
        'stale' (another claim owns the work), 'settled' or 'decided' otherwise."""
        return _outcome(self._run("begin_grant", request_id, now_ms, args_extra=[token]))

    def finish_grant(
        self,
        request_id: str,
        token: str,
        issued_ms: int,
        expires_ms: int,
        blob: str,
        now_ms: int,
        *,
        issued: str,
        late: str,
        held: str = "",
    ) -> Outcome:
        """Record what the backend issued: 'ok' (now active), 'late' (the request ended meanwhile:
        revoke queued) or 'stale' (not the current claim: nothing recorded). `held`: the
        pipeline's held-grants key (keys.held_grants) the active grant joins."""
        cred_ttl_ms = max(expires_ms - now_ms, 0) + self.retention_s * 1000
        return _outcome(
            self._run(
                "finish_grant",
                request_id,
                now_ms,
                events=(issued, late),
                keys_extra=[held],
                args_extra=[
                    token,
                    issued_ms,
                    expires_ms,
                    blob,
                    cred_ttl_ms,
                ],
            )
        )

    def grant_attempt_failed(self, request_id: str, token: str, now_ms: int) -> None:
        self._run("grant_attempt_failed", request_id, now_ms, args_extra=[token])

    def fail(self, request_id: str, error: str, now_ms: int, event: str) -> Outcome:
        return _outcome(self._run("fail", request_id, now_ms, events=(event, ""), args_extra=[error[:500]]))

    def mark_revoked(self, request_id: str, now_ms: int, event: str) -> Outcome:
        """Record that the backend revoke succeeded. `ok` for exactly one caller; 'inflight' when
        a grant is still running (its end queues another revoke)."""
        return _outcome(
            self._run(
                "revoked",
                request_id,
                now_ms,
                events=(event, ""),
                keys_extra=[keys.expired_messages()],
                args_extra=[COALESCE_MS],
            )
        )

    def mark_revoked_many(self, done: list[tuple[str, int, str]]) -> list[Outcome]:
        """`mark_revoked` for many (request id, revoked ms, event) in one round trip and one audit
        flush: the same script per request, so each is as atomic as alone (a batch of revokes)."""
        if not done:
            return []
        tokens = [secrets.token_hex(8) for _ in done]
        script = self._scripts["revoked"]
        calls = [
            (script, self._keys(rid, [keys.expired_messages()]), self._args(rid, t, token, (event, ""), [COALESCE_MS]))
            for (rid, t, event), token in zip(done, tokens, strict=True)
        ]
        results = run_scripts(self.r, calls)
        for res, token in zip(results, tokens, strict=True):
            self._after(res, token)
        self.audit.flush_soon()
        return [_outcome(res) for res in results]

    def record_session(self, request_id: str, sealed: str, now_ms: int, event: str) -> Outcome:
        """Keep a grant's session record: 'ok' once; 'exists' after that; 'not_ended' while the
        grant is not over (or never was); 'missing'."""
        return _outcome(
            self._run(
                "session",
                request_id,
                now_ms,
                events=(event, ""),
                keys_extra=[keys.session(request_id)],
                args_extra=[sealed],
            )
        )

    def session_blob(self, request_id: str) -> str | None:
        return self.r.get(keys.session(request_id)) if valid_id(request_id) else None

    def mark_paged(self, request_id: str, user: str) -> bool:
        """Record that `user` is (about to be) told of this request as its on-call; False when
        they already were (once per request and person)."""
        return bool(self._mark_paged(keys=[keys.request(request_id)], args=[f"paged:{user}"]))

    # ---------------------------------------------------------------- extensions

    def extend(
        self, request_id: str, old_ms: int, add_ms: int, max_total_ms: int, by: str, now_ms: int, event: str
    ) -> Outcome:
        """active → active, its window `add_ms` longer: 'ok' (count: the new expiry in ms), 'stale'
        (the expiry is no longer `old_ms`: read again), 'over' (past `max_total_ms` from the grant's
        start), 'not_active', 'missing'."""
        return _outcome(
            self._run(
                "extend",
                request_id,
                now_ms,
                events=(event, ""),
                keys_extra=[keys.extension_approvals(request_id)],
                args_extra=[old_ms, add_ms, max_total_ms, by],
            )
        )

    def extend_ask(
        self,
        request_id: str,
        old_ms: int,
        add_ms: int,
        max_total_ms: int,
        by: str,
        reason: str,
        required: int,
        round_id: str,
        now_ms: int,
        event: str,
    ) -> Outcome:
        """Open an extension's approval round: 'ok' (status: the round id), 'open' (the same
        extension is already waiting), 'busy' (another one is), or a refusal as `extend`."""
        return _outcome(
            self._run(
                "extend_ask",
                request_id,
                now_ms,
                events=(event, ""),
                keys_extra=[keys.extension_approvals(request_id)],
                args_extra=[old_ms, add_ms, max_total_ms, by, reason, required, round_id],
            )
        )

    def extend_approve(
        self,
        request_id: str,
        old_ms: int,
        max_total_ms: int,
        user: str,
        round_id: str,
        now_ms: int,
        *,
        given: str,
        extended: str,
    ) -> Outcome:
        """`user` approves the open round `round_id`: 'recorded', 'approved' (applied), 'duplicate',
        'no_round', 'stale' (read again), or a refusal as `extend`."""
        return _outcome(
            self._run(
                "extend_approve",
                request_id,
                now_ms,
                events=(given, extended),
                keys_extra=[keys.extension_approvals(request_id)],
                args_extra=[old_ms, max_total_ms, user, round_id],
            )
        )

    def extension_approvers(self, request_id: str) -> list[str]:
        return sorted(self.r.hkeys(keys.extension_approvals(request_id)))

    def reissued(self, request_id: str, expires_ms: int, blob: str, now_ms: int, event: str) -> Outcome:
        """Keep a credential re-issued for the window ending at `expires_ms`: 'ok', 'stale' (the
        window moved again meanwhile) or 'decided' (the grant ended)."""
        cred_ttl_ms = max(expires_ms - now_ms, 0) + self.retention_s * 1000
        return _outcome(
            self._run("reissued", request_id, now_ms, events=(event, ""), args_extra=[expires_ms, blob, cred_ttl_ms])
        )

    def set_fields(self, request_id: str, **fields: str) -> None:
        if self.r.exists(keys.request(request_id)):
            self.r.hset(keys.request(request_id), mapping=fields)

    def message_owed(self, request_id: str) -> None:
        """What the request's message shows changed outside a transition (a gate's state): its
        revision moves on, as the transitions' `message_owed` does, so the next `slack:` job renders."""
        if self.r.exists(keys.request(request_id)):
            self.r.hincrby(keys.request(request_id), "rev", 1)


def revision_of(req: AccessRequest) -> str:
    """The revision of the state `req` holds, read in the same snapshot as that state (so a
    transition after the read bumps past it, and the message is rendered again)."""
    return req.fields.get("rev") or "0"


def _read_many(pipe, ids: list[str]) -> None:
    """Queue the reads of `ids`' requests (with the approvals key earlier versions kept)."""
    for i in ids:
        pipe.hgetall(keys.request(i))
        pipe.hgetall(keys.approvals(i))


def _requests_of(res: list) -> list[AccessRequest]:
    """The requests `_read_many`'s replies hold (the ones that exist)."""
    return [AccessRequest.from_hash(h, apr) for h, apr in zip(res[::2], res[1::2], strict=True) if h and "status" in h]


def _outcome(res: list) -> Outcome:
    value = res[1]
    if isinstance(value, int):
        return Outcome(result=res[0], count=value)
    return Outcome(result=res[0], status=value or None)


def _ms(dt) -> int:
    return int(round(dt.timestamp() * 1000))


def valid_id(request_id: str) -> bool:
    if not isinstance(request_id, str):
        return False
    return 0 < len(request_id) <= 64 and all(c.isalnum() or c in "-_" for c in request_id)
