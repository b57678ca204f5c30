"""Slack messages jit owes someone, outside a request's own message: alerts and notices.

Each is a due-queue item, so it survives Slack outages and crashes like a grant or a revoke:
retried with backoff (Retry-After honoured, channel pacing respected), never dropped.

* `bgalert:<request id>` — the security channel hears that break glass was used. Queued by the
  break-glass transition itself (bot/store/requests.py), in the same atomic step as the approval.
  Sent at least once: the request's `break_glass_alerted_ms` is written after Slack accepted the
  post, so a crash in between can post it twice, never zero times. An alert not delivered within
  ALERT_LATE_MS is visible: `jit_undelivered_alerts` (metrics), the auditors' App Home, and the
  alert itself says how late it is when it finally goes out.
* `notice:<id>` — any other owed line (audit-channel notices of policy loads and rejections, a
  revoke that keeps failing, a refusal shown to one user): its text waits in `keys.notice(id)`
  until posted. A notice with `not_after_ms` (ephemeral click feedback, useless minutes later) is
  dropped once that passes; every other notice is retried until Slack takes it.
"""

from __future__ import annotations

import logging

from slack_sdk.errors import SlackApiError

from bot.core.clock import human, now_ms
from bot.core.model import AccessRequest
from bot.decision.slack.views.blocks import break_glass_alert as render_break_glass_alert
from bot.decision.slack.views.blocks import revoke_failure_alert
from bot.store import keys
from bot.store.notices import ALERT_LATE_MS
from workers.jobs.notify.pacing import take_slot
from workers.jobs.notify.slack_api import call_slack

log = logging.getLogger("jit.slack.notices")


def send_notice(rt, nid: str) -> None:
    """Due handler of `notice:<nid>`: post it; done once Slack took it (or it is past use)."""
    n = rt.notices.payload(nid)
    if n is None:
        return  # sent already
    member = f"notice:{nid}"
    if n.get("not_after_ms") and now_ms() > n["not_after_ms"]:
        log.info("notice %s dropped: no longer useful", nid)
        rt.notices.delivered(member)
        return
    text = n["text"] + _late_note(n.get("owed_ms"), bool(n.get("alert")))
    try:
        if n.get("user"):
            call_slack(rt, n["channel"], rt.slack.chat_postEphemeral, channel=n["channel"], user=n["user"], text=text)
        else:
            take_slot(rt, n["channel"])
            kwargs = {"thread_ts": n["thread_ts"]} if n.get("thread_ts") else {}
            call_slack(rt, n["channel"], rt.slack.chat_postMessage, channel=n["channel"], text=text, **kwargs)
    except SlackApiError as e:
        permanent = e.response is not None and e.response.status_code == 200
        if permanent and n.get("user"):
            log.warning("ephemeral notice not sent: %s", e.response.get("error"))
            rt.notices.delivered(member)
            return
        raise  # retried with backoff: an owed message is never dropped
    rt.notices.delivered(member)


def send_break_glass_alert(rt, request_id: str) -> None:
    """Due handler of `bgalert:<request id>`."""
    member = f"bgalert:{request_id}"
    req = rt.store.get(request_id)
    if req is None:
        rt.notices.delivered(member)
        return
    fields = rt.store.fields(
        request_id,
        "break_glass_by",
        "break_glass_justification",
        "outside_window",
        "break_glass_asked_ttl_s",
        "break_glass_alerted_ms",
        "decided_ms",
    )
    bg = rt.rules.policy_of(req).break_glass_for(req.action) or rt.policy.break_glass_for(req.action)
    if fields.get("break_glass_alerted_ms") or bg is None:
        rt.notices.delivered(member)
        return
    rt.notices.owed_since(member, int(fields.get("decided_ms") or now_ms()))
    asked = fields.get("break_glass_asked_ttl_s")
    text = render_break_glass_alert(
        req,
        fields.get("break_glass_by") or req.decided_by or "",
        fields.get("break_glass_justification", ""),
        bool(fields.get("outside_window")),
        int(asked) if asked else None,
    ) + _late_note(int(fields["decided_ms"]) if fields.get("decided_ms") else None, True)
    take_slot(rt, bg.security_channel)
    call_slack(rt, bg.security_channel, rt.slack.chat_postMessage, channel=bg.security_channel, text=text)
    rt.store.set_fields(request_id, break_glass_alerted_ms=str(now_ms()))
    rt.notices.delivered(member)


def revoke_failing(rt, req: AccessRequest, attempts: int, error: str) -> str:
    """Tell the request's thread that revoking keeps failing (jit keeps retrying)."""
    channel = rt.redis.hget(keys.request(req.id), "message_channel") or req.channel
    return rt.notices.queue(channel, revoke_failure_alert(attempts, error), thread_ts=req.message_ts, alert=True)


def _late_note(owed_ms: int | None, alert: bool) -> str:
    if not alert or owed_ms is None:
        return ""
    late = now_ms() - owed_ms
    if late < ALERT_LATE_MS:
        return ""
    return f"\n:warning: _Delivered late: this alert waited {human(late / 1000)} for Slack._"


def break_glass_alert(rt, rid: str, token: str) -> None:
    """`bgalert:<id>`."""
    send_break_glass_alert(rt, rid)


def notice(rt, nid: str, token: str) -> None:
    """`notice:<id>`."""
    send_notice(rt, nid)
