"""Pacing Slack posts per channel: about one a second, new requests oldest first, a digest when many wait.

Slack allows about one `chat.postMessage` a second per channel. All pacing state is in Redis,
so every worker process shares it:

* `keys.channel_next_slot(channel)` — when the channel's next post may go out;
* `keys.channel_not_before(channel)` — set from a 429's Retry-After (`messages.call_slack`);
  nothing is posted to the channel before it;
* `keys.channel_outbox(channel)` — requests whose first message waits, oldest first.

A request's first message is posted by its channel's one due item, `post:<channel>`
(`drain_channel`): creating a request puts it in the outbox and makes that item due, and a later
transition's `slack:` job that finds the message not yet out does the same (`owe_first_post`).
The channel's item posts the outbox's head in each of the channel's slots, oldest first, until the
outbox is empty, and comes back when the next slot is. So a burst of N requests is one job posting
in turn — not N jobs racing for the head and coming back to find their message posted by another
(each of those was a claim, an RQ job and a dozen Redis round trips). A request is only ever posted
under its message lock and only while it has no `message_ts`: no duplicates. Nothing leaves the
outbox unposted unless its request is gone, or Slack refused its message: then its own `slack:`
item comes back after a backoff and puts it at the back of the outbox, so one message Slack will
not take never holds up the rest of the channel (leaving and coming back due are one atomic step).
The channel's item is done only with the outbox empty — done and a last look are one atomic step,
so a request that came in meanwhile is never left behind; a worker that dies mid-drain leaves the
item to come due when its lease lapses; and every worker's upkeep re-arms a channel waiting with no
item due (`rearm_posters`: an older worker drops `post:` items it does not know).

Digest: when more than `JIT_SLACK_DIGEST_AFTER` requests wait for one channel that no digest
has listed yet, the next slot posts one "N new requests" message listing them (id, action,
pipeline, reason) as a heads-up; each request's own message — the one with its buttons, its
thread, its updates — still follows in order, one a second. So the digest never carries
buttons: approvals always happen on a request's own message.

Thread notes (reminders) and requester DMs take a slot of their channel as well (`take_slot`).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import NamedTuple

from slack_sdk.errors import SlackApiError

from bot.core.clock import now_ms, to_ms
from bot.decision.slack.views.text import MAX_TEXT, code, literal, section, width
from bot.store import keys, locks
from bot.store.due import DueQueue, channel_post_member
from bot.store.requests import revision_of
from workers.jobs.notify.render import message_hash, render
from workers.jobs.notify.slack_api import call_slack, maybe_applied
from workers.queue.retry import RetryLater

log = logging.getLogger("jit.slack.pacing")

#: A head whose message lock is held (being posted right now) is retried this soon.
BUSY_RETRY_MS = 250
#: Lines in a digest; the rest are counted.
DIGEST_LINES = 20

# KEYS: slot, not_before[, outbox]
# ARGV: now_ms, interval_ms, request key prefix, lock key prefix, lock token, lock ttl ms
# → {'wait', ms} | {'go'} (slot only) | {'post', request_id, backlog} | {'empty'}
_TAKE = (
    """
if #KEYS == 3 and redis.call('ZCARD', KEYS[3]) == 0 then return {'empty'} end
local now = tonumber(ARGV[1])
local free = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), tonumber(redis.call('GET', KEYS[2]) or '0'))
if free > now then return {'wait', tostring(free - now)} end
local function take()
  local interval = tonumber(ARGV[2])
  if interval > 0 then redis.call('SET', KEYS[1], now + interval, 'PX', interval + 60000) end
end
if #KEYS == 2 then take() return {'go'} end
while true do
  local head = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
  if not head then return {'empty'} end
  local req = ARGV[3] .. head
  local ts = redis.call('HGET', req, 'message_ts')
  if (not redis.call('HGET', req, 'status')) or (ts and ts ~= '') then
    redis.call('ZREM', KEYS[3], head)
  elseif not redis.call('SET', ARGV[4] .. head, ARGV[5], 'NX', 'PX', ARGV[6]) then
    return {'wait', '"""
    + str(BUSY_RETRY_MS)
    + """'}
  else
    take()
    return {'post', head, tostring(redis.call('ZCARD', KEYS[3]))}
  end
end
"""
)


# KEYS: message lock, request, outbox, due, wake
# ARGV: request id, outbox score (its creation ms), the channel's member, now_ms
# → 'busy' (being posted right now) | 'posted' | 'gone' | 'queued'
# A request whose message Slack refused before waits behind the ones waiting now.
_OWE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 'busy' end
local ts = redis.call('HGET', KEYS[2], 'message_ts')
if ts and ts ~= '' then return 'posted' end
if not redis.call('HGET', KEYS[2], 'status') then return 'gone' end
local score = ARGV[2]
if redis.call('HEXISTS', KEYS[2], 'post_refusals') == 1 then score = ARGV[4] end
redis.call('ZADD', KEYS[3], 'NX', score, ARGV[1])
if redis.call('ZADD', KEYS[4], 'NX', ARGV[4], ARGV[3]) == 1 then
  redis.call('RPUSH', KEYS[5], '1')
  redis.call('LTRIM', KEYS[5], -16, -1)
end
return 'queued'
"""

#: A message Slack refused (ok=false) comes back after this long, doubling per refusal up to the cap.
REFUSED_RETRY_MS = 1_000
REFUSED_RETRY_CAP_MS = 300_000


@dataclass(frozen=True)
class Turn:
    """What the channel allows now: wait `wait_ms`, or post `request_id` (its lock is ours)."""

    kind: str  # 'wait' | 'post' | 'empty'
    wait_ms: int = 0
    request_id: str | None = None
    backlog: int = 0
    token: str = ""


class ChannelPacer:
    def __init__(self, rt) -> None:
        self.rt = rt
        self.r = rt.redis
        self.interval_ms = rt.settings.jit_slack_post_interval_ms
        self._take = self.r.register_script(_TAKE)

    def take_turn(self, channel: str) -> Turn:
        """The channel's slot, with the oldest waiting request to post in it (locked for us)."""
        token = secrets.token_hex(8)
        res = self._take(
            keys=[keys.channel_next_slot(channel), keys.channel_not_before(channel), keys.channel_outbox(channel)],
            args=[now_ms(), self.interval_ms, keys.request(""), keys.slack_lock(""), token, 30_000],
        )
        if res[0] == "wait":
            return Turn("wait", wait_ms=int(res[1]))
        if res[0] == "post":
            return Turn("post", request_id=res[1], backlog=int(res[2]), token=token)
        return Turn("empty")

    def take_slot(self, channel: str) -> int:
        """Take the channel's slot for one post: 0 when taken, else ms to wait."""
        res = self._take(
            keys=[keys.channel_next_slot(channel), keys.channel_not_before(channel)],
            args=[now_ms(), self.interval_ms, "", "", "", 0],
        )
        return int(res[1]) if res[0] == "wait" else 0

    def release(self, request_id: str, token: str) -> None:
        locks.release(self.r, keys.slack_lock(request_id), token)

    def posted(self, channel: str, request_id: str) -> None:
        self.r.zrem(keys.channel_outbox(channel), request_id)


def owe_first_post(rt, req) -> str:
    """See that `req`'s first message will be posted: it waits in its channel's outbox and the
    channel's item is due. 'queued' (the channel's item posts it, rendering the state it finds
    then), 'posted' (it is out: bring it up to date instead), 'busy' (being posted right now,
    maybe from a state older than the caller's: come back) or 'gone'."""
    channel = req.channel
    script = rt.redis.register_script(_OWE)
    return script(
        keys=[
            keys.slack_lock(req.id),
            keys.request(req.id),
            keys.channel_outbox(channel),
            keys.due(),
            keys.due_wake(),
        ],
        args=[req.id, to_ms(req.created_at), channel_post_member(channel), now_ms()],
    )


def drain_channel(rt, channel: str, token: str) -> None:
    """`post:<channel>`: post the channel's waiting first messages in turn, oldest first, one per
    slot; RetryLater until the next slot. Done only when the outbox is empty."""
    pacer = ChannelPacer(rt)
    member = channel_post_member(channel)
    posted = 0
    try:
        while True:
            turn = pacer.take_turn(channel)
            if turn.kind == "empty":
                break
            if turn.kind == "wait":
                raise RetryLater(turn.wait_ms)
            assert turn.request_id is not None
            try:
                if _post_head(rt, pacer, channel, turn):
                    if not posted:  # the channel works: an earlier failure's backoff starts over
                        rt.redis.hdel(keys.due_attempts(), member)
                    posted += 1
            except SlackApiError as e:
                if e.response is None or e.response.status_code != 200:
                    raise
                # Slack refused this message itself (ok=false): out of the way, back later
                _refused(rt, channel, turn.request_id, e)
            finally:
                pacer.release(turn.request_id, turn.token)
    finally:
        if posted:
            _refresh_homes_later(rt)
    # Empty when last looked at. A request that came in since found this item queued and did not
    # arm it again: done and a last look are one atomic step, so it is never left behind.
    DueQueue(rt.redis).done_unless_waiting(member, token, keys.channel_outbox(channel), now_ms())


def _refresh_homes_later(rt) -> None:
    """App Home follows in a job of its own: never between this channel's posts, and never failing
    the drain (it is a dashboard)."""
    try:
        rt.dispatcher.refresh_homes()
    except Exception as e:  # noqa: BLE001
        log.warning("App Home refresh not queued: %s", type(e).__name__)


# KEYS: request, outbox, due, claims, wake
# ARGV: request id, its `slack:` member, now_ms, first backoff ms, longest backoff ms
# → {refusals so far, backoff ms}; {0, 0} when the request is gone. One step: no crash between
# leaving the outbox and being due again can leave the request with nobody to post it.
_REFUSED = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return {0, 0}
end
local n = redis.call('HINCRBY', KEYS[1], 'post_refusals', 1)
local delay = math.min(tonumber(ARGV[4]) * 2 ^ (n - 1), tonumber(ARGV[5]))
redis.call('ZADD', KEYS[3], tonumber(ARGV[3]) + delay, ARGV[2])
redis.call('HDEL', KEYS[4], ARGV[2])
redis.call('RPUSH', KEYS[5], '1')
redis.call('LTRIM', KEYS[5], -16, -1)
redis.call('ZREM', KEYS[2], ARGV[1])
return {n, delay}
"""


def _refused(rt, channel: str, request_id: str, error: SlackApiError) -> None:
    """The request leaves the outbox and its own `slack:` item comes back after a backoff (per
    request, doubling), which puts it at the back of the outbox: the rest of the channel goes on."""
    n, delay = rt.redis.register_script(_REFUSED)(
        keys=[
            keys.request(request_id),
            keys.channel_outbox(channel),
            keys.due(),
            keys.due_claims(),
            keys.due_wake(),
        ],
        args=[request_id, f"slack:{request_id}", now_ms(), REFUSED_RETRY_MS, REFUSED_RETRY_CAP_MS],
    )
    if n:
        log.warning(
            "Slack refused the message of %s (%s, refusal %d): trying again in %d ms",
            request_id,
            (error.response or {}).get("error"),
            n,
            delay,
            extra={"request_id": request_id},
        )


def rearm_posters(rt) -> list[str]:
    """The channels of the policy whose outbox waits with no poster in the due queue get one: a
    backstop for whatever dropped it (an older worker that knew no `post:` items, say). Returns
    those channels. Run by every worker's upkeep."""
    due = DueQueue(rt.redis)
    channels = sorted({rt.policy.channel_for(action) for action in rt.policy.actions})
    pipe = rt.redis.pipeline(transaction=False)
    for channel in channels:
        pipe.zcard(keys.channel_outbox(channel))
        pipe.zscore(keys.due(), channel_post_member(channel))
    got = pipe.execute()
    stranded = [c for c, waiting, armed in zip(channels, got[::2], got[1::2], strict=True) if waiting and armed is None]
    for channel in stranded:
        if due.ensure(channel_post_member(channel), now_ms()):
            log.warning("re-armed the poster of %s: its outbox waited with none due", channel)
    return stranded


def _post_head(rt, pacer: ChannelPacer, channel: str, turn: Turn) -> bool:
    """Use the slot: a digest if many wait undigested, else the head's message. True if the head was posted."""

    if turn.backlog > rt.settings.jit_slack_digest_after and _post_digest(rt, channel):
        return False
    rid = turn.request_id
    req = rt.store.get(rid)
    if req is None or req.message_ts:
        pacer.posted(channel, rid)
        return True
    rev = revision_of(req)  # the state's own: a transition after the read renders again
    text, blocks = render(rt, req)
    sent_ms, settle_ms = req.fields.get("post_uncertain_ms"), req.fields.get("post_settle_ms")
    if sent_ms:
        if now_ms() < int(settle_ms or 0):
            raise RetryLater(int(settle_ms) - now_ms())  # the lost attempt may still land
        if ts := find_earlier_post(rt, channel, rid, int(sent_ms)):
            # an earlier attempt timed out on our side but reached Slack: adopt it, never post twice
            rt.store.set_fields(rid, message_ts=ts, message_channel=channel)
            pacer.posted(channel, rid)
            return True
    try:
        resp = call_slack(
            rt,
            channel,
            rt.slack.chat_postMessage,
            channel=channel,
            text=text,
            blocks=blocks,
            metadata={"event_type": POST_EVENT, "event_payload": {"request_id": rid}},
        )
    except Exception as e:
        if not maybe_applied(e):
            raise
        # Slack may still post it after we gave up: look for it (by its metadata) before posting
        # again, once it must have landed
        timeout_ms = int(rt.slack.timeout * 1000)
        rt.store.set_fields(
            rid, post_uncertain_ms=str(now_ms() - timeout_ms - 5000), post_settle_ms=str(now_ms() + timeout_ms + 2000)
        )
        raise RetryLater(timeout_ms + 2000) from None
    rt.store.set_fields(
        rid,
        message_ts=resp["ts"],
        message_channel=resp["channel"],
        message_hash=message_hash(text, blocks),
        message_rev=rev,
    )
    pacer.posted(channel, rid)
    return True


#: Message metadata that marks a request's own message, so a lost answer can be recovered.
POST_EVENT = "jit_access_request"


def find_earlier_post(rt, channel: str, request_id: str, since_ms: int) -> str | None:
    """The ts of a message of ours for `request_id` posted since `since_ms`, if Slack has one."""
    resp = call_history(rt, channel, since_ms)
    for m in resp.get("messages") or []:
        meta = m.get("metadata") or {}
        if meta.get("event_type") == POST_EVENT and (meta.get("event_payload") or {}).get("request_id") == request_id:
            return m.get("ts")
    return None


def call_history(rt, channel: str, since_ms: int):

    return call_slack(
        rt,
        channel,
        rt.slack.conversations_history,
        channel=channel,
        oldest=f"{since_ms / 1000:.6f}",
        limit=200,
        include_all_metadata=True,
    )


def _post_digest(rt, channel: str) -> bool:
    """One message listing the waiting requests no digest has listed yet. True if posted.

    Asked at every slot while the backlog is long, so the common answer ("no: the last digest
    listed them") is one ZCOUNT: the channel keeps the outbox score of the newest request a digest
    listed, and only requests waiting with a later score are new to a digest."""

    outbox, mark_key = keys.channel_outbox(channel), keys.channel_digested(channel)
    mark = rt.redis.get(mark_key)
    after = f"({mark}" if mark else "-inf"
    if rt.redis.zcount(outbox, after, "+inf") <= rt.settings.jit_slack_digest_after:
        return False
    fresh = rt.redis.zrangebyscore(outbox, after, "+inf", start=0, num=200, withscores=True)
    reqs = _waiting([rid for rid, _ in fresh], rt.redis)
    if len(reqs) <= rt.settings.jit_slack_digest_after:
        return False
    # Marked before posting: a crash here loses a heads-up, never posts it twice.
    rt.redis.set(mark_key, int(fresh[-1][1]), ex=86400)
    text, blocks = digest_blocks(reqs)
    call_slack(rt, channel, rt.slack.chat_postMessage, channel=channel, text=text, blocks=blocks)
    log.info("digest of %d requests posted to %s", len(reqs), channel)
    return True


class Waiting(NamedTuple):
    """What a digest lists of a request (read alone: a digest may list hundreds)."""

    id: str
    action: str
    pipeline: str
    reason: str


_LISTED = ("action", "pipeline", "reason", "status", "message_ts")


def _waiting(ids: list[str], r) -> list[Waiting]:
    """The requests of `ids` that still wait for their first post (one round trip)."""
    pipe = r.pipeline(transaction=False)
    for rid in ids:
        pipe.hmget(keys.request(rid), _LISTED)
    out = []
    for rid, (action, pipeline, reason, status, ts) in zip(ids, pipe.execute(), strict=True):
        if status and not ts:
            out.append(Waiting(rid, action or "", pipeline or "", reason or ""))
    return out


def digest_blocks(reqs) -> tuple[str, list[dict]]:
    """The digest message (pure): N new requests, one line each, their own messages follow."""
    n = len(reqs)
    lines = [
        f"• {code(r.id, 64)} {code(r.action, 64)} for {code(r.pipeline, 64)} — {literal(r.reason, 120) or '—'}"
        for r in reqs[:DIGEST_LINES]
    ]

    def listing(shown: int) -> str:
        more = [f"…and {n - shown} more"] if n > shown else []
        return "\n".join(lines[:shown] + more)

    shown = len(lines)
    while width(listing(shown)) > MAX_TEXT:  # whole lines only: never cut one mid-way
        shown -= 1
    head = (
        f":inbox_tray: *{n} new access requests* are waiting here. "
        "Each one's own message, with its buttons, follows below in order."
    )
    text = f"{n} new access requests are waiting for approval"
    return text, [section(head), section(listing(shown))]


def take_slot(rt, channel: str) -> None:
    """The channel's next posting slot, or RetryLater until it comes (thread notes, DMs, notices)."""
    wait = ChannelPacer(rt).take_slot(channel)
    if wait:
        raise RetryLater(wait)
