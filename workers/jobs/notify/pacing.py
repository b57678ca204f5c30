"""Pacing Slack posts per channel: about one a second, new requests oldest first, a digest when many wait.

Slack allows about one `chat.postMessage` a second per channel. All pacing state is in Redis,
so every worker process shares it:

* `keys.channel_next_slot(channel)` — when the channel's next post may go out;
* `keys.channel_not_before(channel)` — set from a 429's Retry-After (`messages.call_slack`);
  nothing is posted to the channel before it;
* `keys.channel_outbox(channel)` — requests whose first message waits, oldest first.

A job that gets a channel's slot posts the *oldest* waiting request there, not necessarily its
own, so requests appear in the order they were made however the jobs race; a job further back
comes back about when its turn is due (position × interval), so a burst does not turn into a
storm of retries. A request is only ever posted under its message lock and only while it has
no `message_ts`: no duplicates. Nothing leaves the outbox unposted unless its request is gone.

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

from slack_sdk.errors import SlackApiError

from bot.core.clock import now_ms, to_ms
from bot.decision.slack.views.text import MAX_TEXT, code, literal, section, width
from bot.store import keys, locks
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

    def enqueue(self, channel: str, request_id: str, created_ms: int) -> None:
        self.r.zadd(keys.channel_outbox(channel), {request_id: created_ms}, nx=True)

    def position(self, channel: str, request_id: str) -> int | None:
        return self.r.zrank(keys.channel_outbox(channel), request_id)

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

    def to_back(self, channel: str, request_id: str) -> None:
        self.r.zadd(keys.channel_outbox(channel), {request_id: now_ms()}, xx=True)

    def posted(self, channel: str, request_id: str) -> None:
        self.r.zrem(keys.channel_outbox(channel), request_id)


def post_in_turn(rt, req) -> bool:
    """See that `req`'s first message is posted, older waiting requests in its channel first.
    True when this call posted it (rendered from the state read under its message lock), False
    when it was out already or its request is gone.

    Raises RetryLater when the channel is not free: the caller's due item comes back then.
    """

    pacer = ChannelPacer(rt)
    channel = req.channel
    pacer.enqueue(channel, req.id, to_ms(req.created_at))
    while True:
        turn = pacer.take_turn(channel)
        if turn.kind == "empty":
            return False  # ours is out (or its request is gone)
        if turn.kind == "wait":
            place = pacer.position(channel, req.id)
            if place is None:
                return False  # posted meanwhile, by whoever had the slot
            raise RetryLater(turn.wait_ms + place * pacer.interval_ms)
        assert turn.request_id is not None
        try:
            posted = _post_head(rt, pacer, channel, turn)
        except SlackApiError as e:
            if e.response is not None and e.response.status_code == 200:
                # Slack refused this message itself (ok=false): to the back of the queue, so
                # one message Slack will not take never holds up the rest of the channel.
                pacer.to_back(channel, turn.request_id)
            raise
        finally:
            pacer.release(turn.request_id, turn.token)
        if posted and turn.request_id == req.id:
            return True


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
    reqs = [r for r in rt.store.get_many([rid for rid, _ in fresh]) if not r.message_ts]
    if len(reqs) <= rt.settings.jit_slack_digest_after:
        return False
    # Marked before posting: a crash here loses a heads-up, never posts it twice.
    rt.redis.set(mark_key, int(fresh[-1][1]), ex=86400)
    text, blocks = digest_blocks(reqs)
    call_slack(rt, channel, rt.slack.chat_postMessage, channel=channel, text=text, blocks=blocks)
    log.info("digest of %d requests posted to %s", len(reqs), channel)
    return True


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
