"""One-off Slack notices posted by RQ jobs: the break-glass alert and audit-channel lines.

RECONSTRUCTED: the original of this file was overwritten by mistake (Slack-delivery helper,
issue 8) before it was committed; this is a best-effort rebuild of its two entry points from
their callers (bot/runtime.py) and tests (tests/test_break_glass.py). Its owner should check it.
"""

from __future__ import annotations

import logging
import time

from slack_sdk.errors import SlackApiError

from bot.domain import keys
from bot.domain.clock import now_ms

log = logging.getLogger("jit.slack.notices")


def _post(rt, channel: str, text: str) -> None:
    """chat.postMessage with up to three waits on a 429 (in a job: sleeping is fine)."""
    for attempt in range(3):
        try:
            rt.slack.chat_postMessage(channel=channel, text=text)
            return
        except SlackApiError as e:
            resp = e.response
            if resp is None or resp.status_code != 429 or attempt == 2:
                raise
            try:
                delay = float(resp.headers.get("Retry-After", "1"))
            except (TypeError, ValueError):
                delay = 1.0
            time.sleep(min(delay, 10.0))


def break_glass_alert(request_id: str) -> None:
    """RQ job: tell the security channel that break glass was used. Posted once per request,
    however often the job runs."""
    from bot.runtime import current
    from bot.slack.blocks import break_glass_alert as render

    rt = current()
    req = rt.store.get(request_id)
    if req is None:
        return
    bg = rt.access.policy_of(req).break_glass_for(req.action)
    if bg is None:
        return
    h = keys.request(request_id)
    fields = rt.store.fields(
        request_id, "break_glass_by", "break_glass_justification", "outside_window", "break_glass_asked_ttl_s"
    )
    # Claimed before posting: a crash loses the alert rather than posting it twice; the audit
    # entry (request.approved, break_glass) holds the same facts.
    if not rt.redis.hsetnx(h, "break_glass_alerted_ms", str(now_ms())):
        return
    asked = fields.get("break_glass_asked_ttl_s")
    text = render(
        req,
        fields.get("break_glass_by") or req.decided_by or "",
        fields.get("break_glass_justification", ""),
        bool(fields.get("outside_window")),
        int(asked) if asked else None,
    )
    try:
        _post(rt, bg.security_channel, text)
    except Exception:
        rt.redis.hdel(h, "break_glass_alerted_ms")  # let the job's retry post it
        raise


def post_notice(channel: str, text: str) -> None:
    """RQ job: one line in a channel (the audit channel's policy-change notes)."""
    from bot.runtime import current

    _post(current(), channel, text)
