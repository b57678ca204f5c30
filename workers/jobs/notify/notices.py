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

import json
import logging
import secrets

from slack_sdk.errors import SlackApiError

from bot.store import metrics
from bot.store import keys
from bot.core.clock import human, now_ms
from bot.core.model import AccessRequest
from bot.decision.slack.views.blocks import break_glass_alert, revoke_failure_alert

log = logging.getLogger("jit.slack.notices")

#: An alert still waiting this long after it was owed is reported as late.
ALERT_LATE_MS = metrics.ALERT_LATE_MS
#: How long an undelivered notice's text is kept (it is retried all along).
NOTICE_TTL_S = 30 * 86400

# KEYS: notice payload, due, claims, wake, undelivered alerts
# ARGV: payload JSON, ttl s, member, now_ms, lease score, claim token, is alert ('1'/'')
_QUEUE = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[3])
redis.call('HSET', KEYS[3], ARGV[3], ARGV[6])
redis.call('RPUSH', KEYS[4], '1')
redis.call('LTRIM', KEYS[4], -16, -1)
if ARGV[7] == '1' then redis.call('ZADD', KEYS[5], 'NX', ARGV[4], ARGV[3]) end
return 1
"""


def queue_notice(
    rt,
    channel: str,
    text: str,
    *,
    thread_ts: str | None = None,
    user: str | None = None,
    not_after_ms: int | None = None,
    alert: bool = False,
) -> str:
    """Owe one Slack message: a channel line, a thread reply (`thread_ts`) or an ephemeral one
    for `user`. Returns its due member. `alert` makes its lateness visible."""
    from bot.store.requests import LEASE_MS

    nid = secrets.token_hex(8)
    member = f"notice:{nid}"
    payload = {"channel": channel, "text": text, "thread_ts": thread_ts, "user": user,
               "not_after_ms": not_after_ms, "alert": alert, "owed_ms": now_ms()}
    token = secrets.token_hex(8)
    t = now_ms()
    rt.redis.eval(
        _QUEUE,
        5,
        keys.notice(nid),
        keys.due(),
        keys.due_claims(),
        keys.due_wake(),
        keys.undelivered_alerts(),
        json.dumps(payload),
        NOTICE_TTL_S,
        member,
        t,
        t + LEASE_MS,
        token,
        "1" if alert else "",
    )
    rt.dispatcher.kick([member], token)
    return member


def send_notice(rt, nid: str) -> None:
    """Due handler of `notice:<nid>`: post it; done once Slack took it (or it is past use)."""
    raw = rt.redis.get(keys.notice(nid))
    if raw is None:
        return  # sent already
    n = json.loads(raw)
    member = f"notice:{nid}"
    if n.get("not_after_ms") and now_ms() > n["not_after_ms"]:
        log.info("notice %s dropped: no longer useful", nid)
        _delivered(rt, nid, member)
        return
    text = n["text"] + _late_note(n.get("owed_ms"), bool(n.get("alert")))
    try:
        if n.get("user"):
            _call(rt, n["channel"], rt.slack.chat_postEphemeral, channel=n["channel"], user=n["user"], text=text)
        else:
            _take_slot(rt, n["channel"])
            kwargs = {"thread_ts": n["thread_ts"]} if n.get("thread_ts") else {}
            _call(rt, n["channel"], rt.slack.chat_postMessage, channel=n["channel"], text=text, **kwargs)
    except SlackApiError as e:
        permanent = e.response is not None and e.response.status_code == 200
        if permanent and n.get("user"):
            log.warning("ephemeral notice not sent: %s", e.response.get("error"))
            _delivered(rt, nid, member)
            return
        raise  # retried with backoff: an owed message is never dropped
    _delivered(rt, nid, member)


def _delivered(rt, nid: str, member: str) -> None:
    pipe = rt.redis.pipeline(transaction=False)
    pipe.delete(keys.notice(nid))
    pipe.zrem(keys.undelivered_alerts(), member)
    pipe.execute()


def send_break_glass_alert(rt, request_id: str) -> None:
    """Due handler of `bgalert:<request id>`."""
    member = f"bgalert:{request_id}"
    req = rt.store.get(request_id)
    if req is None:
        rt.redis.zrem(keys.undelivered_alerts(), member)
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
    bg = rt.access.policy_of(req).break_glass_for(req.action) or rt.policy.break_glass_for(req.action)
    if fields.get("break_glass_alerted_ms") or bg is None:
        rt.redis.zrem(keys.undelivered_alerts(), member)
        return
    rt.redis.zadd(keys.undelivered_alerts(), {member: int(fields.get("decided_ms") or now_ms())}, nx=True)
    asked = fields.get("break_glass_asked_ttl_s")
    text = break_glass_alert(
        req,
        fields.get("break_glass_by") or req.decided_by or "",
        fields.get("break_glass_justification", ""),
        bool(fields.get("outside_window")),
        int(asked) if asked else None,
    ) + _late_note(int(fields["decided_ms"]) if fields.get("decided_ms") else None, True)
    _take_slot(rt, bg.security_channel)
    _call(rt, bg.security_channel, rt.slack.chat_postMessage, channel=bg.security_channel, text=text)
    rt.store.set_fields(request_id, break_glass_alerted_ms=str(now_ms()))
    rt.redis.zrem(keys.undelivered_alerts(), member)


def revoke_failing(rt, req: AccessRequest, attempts: int, error: str) -> str:
    """Tell the request's thread that revoking keeps failing (jit keeps retrying)."""
    channel = rt.redis.hget(keys.request(req.id), "message_channel") or req.channel
    return queue_notice(
        rt, channel, revoke_failure_alert(attempts, error), thread_ts=req.message_ts, alert=True
    )


def tell(rt, channel: str | None, user: str, text: str, *, within_ms: int = 60_000) -> str:
    """An ephemeral note to one user about their click (a refusal): useful only for a minute."""
    return queue_notice(rt, channel or user, text, user=user, not_after_ms=now_ms() + within_ms)


def undelivered_alerts(rt, older_than_ms: int = ALERT_LATE_MS) -> list[tuple[str, int]]:
    """Alerts owed for longer than `older_than_ms`: (due member, owed since ms)."""
    rows = rt.redis.zrangebyscore(keys.undelivered_alerts(), "-inf", now_ms() - older_than_ms, withscores=True)
    return [(m, int(s)) for m, s in rows]


def _late_note(owed_ms: int | None, alert: bool) -> str:
    if not alert or owed_ms is None:
        return ""
    late = now_ms() - owed_ms
    if late < ALERT_LATE_MS:
        return ""
    return f"\n:warning: _Delivered late: this alert waited {human(late / 1000)} for Slack._"


def _take_slot(rt, channel: str) -> None:
    from workers.jobs.notify.pacing import ChannelPacer
    from workers.jobs import RetryLater

    wait = ChannelPacer(rt).take_slot(channel)
    if wait:
        raise RetryLater(wait)


def _call(rt, paced: str, fn, **kwargs):
    from workers.jobs.notify.message import call_slack

    return call_slack(rt, paced, fn, **kwargs)
