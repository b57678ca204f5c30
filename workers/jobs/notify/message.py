"""Keeping a request's Slack message in step with its state (runs in RQ jobs, never in a request)."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets

from slack_sdk.errors import SlackApiError

from bot.store import keys

from bot.store import locks
from bot.core.clock import now_ms
from bot.decision.slack.views.blocks import request_blocks, request_summary

log = logging.getLogger("jit.slack")


def _retry_after_ms(e: SlackApiError) -> int | None:
    if e.response is not None and e.response.status_code == 429:
        try:
            return int(float(e.response.headers.get("Retry-After", "1")) * 1000)
        except (TypeError, ValueError):
            return 1000
    return None


def _respect_channel_pause(rt, channel: str) -> None:
    from workers.jobs import RetryLater

    nb = rt.redis.get(keys.channel_not_before(channel))
    if nb and int(nb) > now_ms():
        raise RetryLater(int(nb) - now_ms())


def _pause_channel(rt, channel: str, delay_ms: int) -> None:
    until = now_ms() + delay_ms
    rt.redis.set(keys.channel_not_before(channel), until, px=delay_ms + 1000)


def call_slack(rt, paced_channel: str, fn, **kwargs):
    """Call a Slack method for a channel, honouring and recording its Retry-After."""
    from workers.jobs import RetryLater

    channel = paced_channel
    _respect_channel_pause(rt, channel)
    try:
        return fn(**kwargs)
    except SlackApiError as e:
        delay = _retry_after_ms(e)
        if delay is not None:
            _pause_channel(rt, channel, delay)
            raise RetryLater(delay) from None
        raise


def render(rt, req) -> tuple[str, list]:
    """The request's message as it should read now: (fallback text, blocks)."""
    blocks = request_blocks(req, **rt.access.message_facts(req))
    return request_summary(req), blocks


def message_hash(text: str, blocks: list) -> str:
    """What was last sent, so an update that changes nothing is skipped."""
    raw = json.dumps([text, blocks], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


#: Held in a request's message lock while an update that timed out may still reach Slack.
_SETTLING = "settling"


def maybe_applied(error: Exception) -> bool:
    """A timeout or a dropped connection after sending: Slack may have done it anyway."""
    import http.client
    import urllib.error

    if isinstance(error, urllib.error.URLError):
        error = error.reason if isinstance(error.reason, Exception) else error
    return isinstance(error, TimeoutError | http.client.RemoteDisconnected | ConnectionResetError)


def sync_request_message(rt, request_id: str) -> None:
    """Post the request's message, or update it to the current state. Idempotent."""
    from workers.jobs import RetryLater

    req = rt.store.get(request_id)
    if req is None:
        return
    if not req.message_ts:
        from workers.jobs.notify.pacing import post_in_turn

        post_in_turn(rt, req)  # the first post: paced per channel, oldest request first
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
        text, blocks = render(rt, req)
        digest = message_hash(text, blocks)
        # Skip an update that would change nothing (the post may already show this state).
        if req.message_ts and rt.redis.hget(keys.request(request_id), "message_hash") != digest:
            channel = rt.redis.hget(keys.request(request_id), "message_channel") or req.channel
            try:
                call_slack(rt, channel, rt.slack.chat_update, channel=channel, ts=req.message_ts, text=text, blocks=blocks)
            except Exception as e:
                if not maybe_applied(e):
                    raise
                # Slack may still apply this update after we gave up on it, and an update sent now
                # could land first and be overwritten by the older state. Hold the message until
                # the late one must have landed, then send the latest state again.
                settle_ms = int(rt.slack.timeout * 1000)
                rt.redis.set(lock, _SETTLING, px=settle_ms)
                rt.redis.hdel(keys.request(request_id), "message_hash")
                raise RetryLater(settle_ms) from None
            rt.store.set_fields(request_id, message_hash=digest)
    finally:
        locks.release(rt.redis, lock, token)
    from bot.decision.slack.views.home import refresh_homes_quietly

    refresh_homes_quietly(rt)  # App Home tabs open now show the change too
