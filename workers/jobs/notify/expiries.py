"""`updates:expired`: after expiries, the grants' Slack messages catch up within Slack's limits.

Revoking only records an expiry in `keys.expired_messages()` (`channel:request_id` → ms) and makes
sure this one job is due (bot/store/requests.py, `_REVOKED`): a storm of revocations is Redis work
only. This job then, each time it runs:

1. per channel where more than JIT_SLACK_DIGEST_AFTER expiries have no digest yet (at most one
   digest a minute per channel), posts one message — "142 grants expired in the last minute" — in
   the channel's posting slot, so people see the storm at once;
2. updates the messages one by one, oldest first, one `chat.update` per slot of the workspace's
   pace (JIT_SLACK_UPDATE_INTERVAL_MS; `chat.update` is Tier 3, about 50 a minute), each with the
   follow-ups its request owes (the requester's "expired" DM), and comes back when the next slot is.

A member leaves the set only after its message is current (or its request or message is gone), so
every message is eventually correct; a crash leaves the rest for the next run. The job finishes
when the set is empty, and re-arms itself if an expiry came in meanwhile.
"""

from __future__ import annotations

import logging
import math

from slack_sdk.errors import SlackApiError

from bot.core.clock import now_ms
from bot.decision.slack.views.text import section
from bot.store import keys
from bot.store.due import DueQueue
from bot.store.requests import EXPIRED_UPDATES
from workers.jobs.notify import followups
from workers.jobs.notify.message import sync_request_message
from workers.jobs.notify.pacing import take_slot
from workers.jobs.notify.slack_api import call_slack
from workers.queue.retry import RetryLater

log = logging.getLogger("jit.slack.expiries")

#: At most one expiry digest per channel this often.
DIGEST_EVERY_MS = 60_000
#: The set is scanned for digests at most this often (it may hold thousands).
SCAN_EVERY_MS = 5_000
#: Most members read in one digest scan.
SCAN_LIMIT = 50_000

# KEYS: slot   ARGV: now_ms, interval_ms → 0 when the slot is ours, else ms to wait
_TAKE_UPDATE_SLOT = """
local now = tonumber(ARGV[1])
local free = tonumber(redis.call('GET', KEYS[1]) or '0')
if free > now then return free - now end
local interval = tonumber(ARGV[2])
if interval > 0 then redis.call('SET', KEYS[1], now + interval, 'PX', interval + 60000) end
return 0
"""


def catch_up(rt, _name: str, token: str) -> None:
    """The `updates:expired` handler (see the module docstring)."""
    r = rt.redis
    if r.zcard(keys.expired_messages()) > rt.settings.jit_slack_digest_after:
        post_digests(rt)
    take = r.register_script(_TAKE_UPDATE_SLOT)
    while True:
        head = r.zrange(keys.expired_messages(), 0, 0)
        if not head:
            break
        wait = int(take(keys=[keys.update_slot()], args=[now_ms(), rt.settings.jit_slack_update_interval_ms]))
        if wait > 0:
            raise RetryLater(wait)
        update_one(rt, head[0])
    # Empty now. An expiry recorded after the read above found this item queued and did not
    # schedule it again: finish, then look once more.
    due = DueQueue(r)
    due.done(EXPIRED_UPDATES, token)
    if r.zcard(keys.expired_messages()):
        due.schedule(EXPIRED_UPDATES, now_ms())


def update_one(rt, member: str) -> None:
    """One expired grant's message brought up to date (and its follow-ups queued), then let go."""
    _channel, _, rid = member.partition(":")
    req = rt.store.get(rid)
    if req is not None:
        followups.schedule(rt, req)
        try:
            sync_request_message(rt, rid)
        except SlackApiError as e:
            if e.response is None or e.response.status_code != 200:
                raise
            # Slack refused this message for good (deleted, channel archived): one message that
            # cannot be updated never holds up the others.
            log.warning("message of %s not updated after expiry: %s", rid, e.response.get("error"))
    rt.redis.zrem(keys.expired_messages(), member)


def post_digests(rt) -> None:
    """One "N grants expired in the last minute" per channel where more than the digest threshold
    expired with no digest yet (one digest a minute per channel at most)."""
    r = rt.redis
    if not r.set(keys.expired_scan_slot(), "1", nx=True, px=SCAN_EVERY_MS):
        return
    t = now_ms()
    by_channel: dict[str, list[float]] = {}
    for member, score in r.zrange(keys.expired_messages(), 0, SCAN_LIMIT - 1, withscores=True):
        by_channel.setdefault(member.partition(":")[0], []).append(score)
    for channel, scores in by_channel.items():
        if not channel:
            continue
        mark = float(r.get(keys.expired_digested(channel)) or 0)
        fresh = [s for s in scores if s > mark]
        if len(fresh) <= rt.settings.jit_slack_digest_after or r.exists(keys.expired_digest_slot(channel)):
            continue
        try:
            take_slot(rt, channel)  # the channel's posting slot (shared with its other posts)
        except RetryLater:
            r.delete(keys.expired_scan_slot())  # owed still: look again next run, in a moment
            continue
        # Marked before posting: a crash here loses a heads-up, never posts it twice.
        r.set(keys.expired_digest_slot(channel), "1", px=DIGEST_EVERY_MS)
        r.set(keys.expired_digested(channel), int(max(fresh)), ex=86400)
        text, blocks = digest(len(fresh), t - int(min(fresh)), rt.settings.jit_slack_update_interval_ms)
        call_slack(rt, channel, rt.slack.chat_postMessage, channel=channel, text=text, blocks=blocks)
        log.info("expiry digest of %d grants posted to %s", len(fresh), channel)


def digest(n: int, span_ms: int, interval_ms: int) -> tuple[str, list[dict]]:
    """The digest message (pure): how many grants expired lately; their messages follow at Slack's pace."""
    minutes = max(1, math.ceil(span_ms / 60_000))
    when = "in the last minute" if minutes == 1 else f"in the last {minutes} minutes"
    grants = "grant" if n == 1 else "grants"
    text = f"{n} {grants} expired {when}"
    pace = f"about {60_000 // interval_ms} a minute" if interval_ms else "as Slack allows"
    detail = (
        f":lock: *{text}* and {'was' if n == 1 else 'were'} revoked. "
        f"Their messages here are being updated ({pace}, Slack's limit)."
    )
    return text, [section(detail)]
