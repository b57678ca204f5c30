"""Keeping a request's Slack message in step with its state (runs in RQ jobs, never in a request)."""

from __future__ import annotations

import logging
import secrets

from bot.store import keys, locks
from bot.store.requests import revision_of
from workers.jobs.notify import followups
from workers.jobs.notify.home import refresh_homes_quietly
from workers.jobs.notify.pacing import BUSY_RETRY_MS, owe_first_post
from workers.jobs.notify.render import message_hash, render
from workers.jobs.notify.slack_api import call_slack, maybe_applied
from workers.queue.retry import RetryLater

log = logging.getLogger("jit.slack")


#: Held in a request's message lock while an update that timed out may still reach Slack.
_SETTLING = "settling"


def sync_request_message(rt, request_id: str, req=None, *, after_transition: bool = False) -> None:
    """Post the request's message, or update it to the current state. Idempotent. `req`: the
    request as the caller just read it (read here when not given). `after_transition`: called for
    a `slack:` item, which every transition bumps the request's revision for — a message already
    rendered from the current revision (posted by another job that had the channel's slot) is
    left alone without rendering it again."""
    req = req or rt.store.get(request_id)
    if req is None:
        return
    if not req.message_ts:
        # The first post is the channel's to make (paced, oldest first: pacing.drain_channel),
        # from the state it reads then, which includes every transition before this job.
        owed = owe_first_post(rt, req)
        if owed == "busy":  # being posted now, perhaps from a state before ours: come back
            raise RetryLater(BUSY_RETRY_MS)
        if owed != "posted":
            return
        # posted since `req` was read: bring it up to date below
    if after_transition:
        # from the snapshot `req` was read in: a transition since owed `slack:<id>` anew, and that
        # job looks again
        rev, shown = revision_of(req), req.fields.get("message_rev")  # shown: None until a message exists
        if rev == shown:
            return
    lock = keys.slack_lock(request_id)
    token = secrets.token_hex(8)
    if not rt.redis.set(lock, token, nx=True, px=30_000):
        if rt.redis.get(lock) == _SETTLING:
            raise RetryLater(max(rt.redis.pttl(lock), 300))
        raise RetryLater(300)
    try:
        req = rt.store.get(request_id)  # re-read under the lock: render the latest state
        if req is None:
            return
        rev = revision_of(req)  # the state's own: a transition after the read renders again
        text, blocks = render(rt, req)
        digest = message_hash(text, blocks)
        # Skip an update that would change nothing (the post may already show this state).
        if req.message_ts and req.fields.get("message_hash") != digest:
            channel = req.fields.get("message_channel") or req.channel
            try:
                call_slack(
                    rt, channel, rt.slack.chat_update, channel=channel, ts=req.message_ts, text=text, blocks=blocks
                )
            except Exception as e:
                if not maybe_applied(e):
                    raise
                # Slack may still apply this update after we gave up on it, and an update sent now
                # could land first and be overwritten by the older state. Hold the message until
                # the late one must have landed, then send the latest state again.
                settle_ms = int(rt.slack.timeout * 1000)
                rt.redis.set(lock, _SETTLING, px=settle_ms)
                rt.redis.hdel(keys.request(request_id), "message_hash", "message_rev")
                raise RetryLater(settle_ms) from None
            rt.store.set_fields(request_id, message_hash=digest, message_rev=rev)
        elif req.message_ts:
            rt.store.set_fields(request_id, message_rev=rev)
    finally:
        locks.release(rt.redis, lock, token)
    refresh_homes_quietly(rt)  # App Home tabs open now show the change too


def on_change(rt, rid: str, token: str) -> None:
    """`slack:<id>`: after every transition, the notes the request now owes are scheduled and its
    message follows its state."""
    req = rt.store.get(rid)
    if req is None:
        return
    # First, so a message still waiting for its channel's slot never holds up a DM.
    followups.schedule(rt, req)
    sync_request_message(rt, rid, req, after_transition=True)


def usage_changed(rt, rid: str, token: str) -> None:
    """`usage:<id>`: a resource server checked the request's token; the message shows the count.
    Scheduled by the checks themselves, at most one per JIT_USAGE_UPDATE_MS (bot/store/usage.py)."""
    sync_request_message(rt, rid)
