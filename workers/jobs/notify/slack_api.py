"""Calling Slack from a job: one place for Retry-After (a 429 pauses the channel for everyone) and
for telling a lost answer from a refusal. Retries themselves are the due queue's (RetryLater)."""

from __future__ import annotations

import http.client
import urllib.error

from slack_sdk.errors import SlackApiError

from bot.core.clock import now_ms
from bot.store import keys
from workers.queue.retry import RetryLater


def retry_after_ms(e: SlackApiError) -> int | None:
    """Slack's Retry-After on a 429, in ms; None for any other refusal."""
    if e.response is not None and e.response.status_code == 429:
        try:
            return int(float(e.response.headers.get("Retry-After", "1")) * 1000)
        except (TypeError, ValueError):
            return 1000
    return None


def call_slack(rt, paced_channel: str, fn, **kwargs):
    """Call a Slack method for a channel, honouring and recording its Retry-After."""
    nb = rt.redis.get(keys.channel_not_before(paced_channel))
    if nb and int(nb) > now_ms():
        raise RetryLater(int(nb) - now_ms())
    try:
        return fn(**kwargs)
    except SlackApiError as e:
        delay = retry_after_ms(e)
        if delay is not None:
            rt.redis.set(keys.channel_not_before(paced_channel), now_ms() + delay, px=delay + 1000)
            raise RetryLater(delay) from None
        raise


def maybe_applied(error: Exception) -> bool:
    """A timeout or a dropped connection after sending: Slack may have done it anyway."""
    if isinstance(error, urllib.error.URLError):
        error = error.reason if isinstance(error.reason, Exception) else error
    return isinstance(error, TimeoutError | http.client.RemoteDisconnected | ConnectionResetError)
