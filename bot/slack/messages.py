"""Keeping a request's Slack message in step with its state (runs in RQ jobs, never in a request)."""

from __future__ import annotations

import logging
import secrets
import time

from slack_sdk.errors import SlackApiError

from bot.domain import keys
from bot.domain.clock import now_ms
from bot.slack.blocks import request_blocks, request_summary

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


def sync_request_message(rt, request_id: str) -> None:
    """Post the request's message, or update it to the current state. Idempotent."""
    from workers.jobs import RetryLater

    req = rt.store.get(request_id)
    if req is None:
        return
    lock = keys.slack_lock(request_id)
    token = secrets.token_hex(8)
    if not rt.redis.set(lock, token, nx=True, px=30_000):
        raise RetryLater(300)
    try:
        req = rt.store.get(request_id)  # re-read under the lock: render the latest state
        if req is None:
            return
        action = rt.policy.action(req.action)
        blocks = request_blocks(req, action.description if action else "", action.approvers if action else None)
        text = request_summary(req)
        if not req.message_ts:
            resp = call_slack(rt, req.channel, rt.slack.chat_postMessage, channel=req.channel, text=text, blocks=blocks)
            rt.store.set_fields(request_id, message_ts=resp["ts"], message_channel=resp["channel"])
        else:
            channel = rt.redis.hget(keys.request(request_id), "message_channel") or req.channel
            call_slack(rt, channel, rt.slack.chat_update, channel=channel, ts=req.message_ts, text=text, blocks=blocks)
    finally:
        # release only our own lock
        if rt.redis.get(lock) == token:
            rt.redis.delete(lock)


def post_thread_notice(rt, req, text: str) -> None:
    """A short note in the request's thread (alerts, reminders). Best effort, but retried by Slack SDK."""
    channel = rt.redis.hget(keys.request(req.id), "message_channel") or req.channel
    kwargs = {"channel": channel, "text": text}
    if req.message_ts:
        kwargs["thread_ts"] = req.message_ts
    for _ in range(3):
        try:
            rt.slack.chat_postMessage(**kwargs)
            return
        except SlackApiError as e:
            delay = _retry_after_ms(e)
            if delay is None:
                log.warning("thread notice failed: %s", e.response.get("error"))
                return
            time.sleep(min(delay / 1000, 5))
        except Exception as e:  # noqa: BLE001
            log.warning("thread notice failed: %s", type(e).__name__)
            return


def post_ephemeral(channel: str, user: str, text: str) -> None:
    """RQ job: an ephemeral note to one user (refusals). A job, so Slack never blocks a click."""
    from bot.runtime import current

    rt = current()
    try:
        rt.slack.chat_postEphemeral(channel=channel, user=user, text=text)
    except SlackApiError as e:
        delay = _retry_after_ms(e)
        if delay is None:
            log.warning("ephemeral failed: %s", e.response.get("error"))
            return
        time.sleep(min(delay / 1000, 10))  # in a job: sleeping here is fine
        rt.slack.chat_postEphemeral(channel=channel, user=user, text=text)
