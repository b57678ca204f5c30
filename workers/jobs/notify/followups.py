"""Notes a request owes people: the requester's DM per outcome, a pending reminder, "expires in 5 min"
(JIT_WARN_BEFORE, with Extend and Release buttons; re-armed when the grant is extended), and how its
grant was used ("Used 2 m 13 s by run 42 · exit 0 · released 12 m 47 s early").

Each is a due-queue item (`dm:`, `remind:`, `warn:`, `session:` + request id), so it survives restarts.
The `slack:` job, which runs after every transition, schedules them from the request's state
(`schedule`, idempotent: ZADD NX). A note is sent at most once per request and kind: a marker
field on the request (`dm_<outcome>`, `reminded_ms`, `warned_ms`) is written under the
request's notice lock right after Slack accepted it, and checked under the same lock before
sending. A note whose request has moved on does nothing. Posts take a slot of their channel
(workers/jobs/notify/pacing.py) and honour a 429's Retry-After like every other post.
"""

from __future__ import annotations

import logging
import math
import secrets
from datetime import timedelta

from redis.exceptions import LockError
from slack_sdk.errors import SlackApiError

from bot.core.clock import human, now, now_ms, to_ms
from bot.core.model import AccessRequest, Status
from bot.decision.slack.views.blocks import oncall_page_text, warning_blocks
from bot.decision.slack.views.session import session_line, transcript_message
from bot.decision.slack.views.text import MAX_MESSAGE_TEXT, code, fit, literal, mention
from bot.decision.slack.views.text import date as slack_date
from bot.store import keys
from bot.store.due import LEASE_MS
from workers.jobs.notify.pacing import take_slot
from workers.jobs.notify.slack_api import call_slack
from workers.queue.retry import RetryLater

log = logging.getLogger("jit.slack.notices")

#: Only a grant whose window (extensions included) is longer than this, and than JIT_WARN_BEFORE,
#: is warned before it ends.
MIN_WARNED_WINDOW = timedelta(minutes=10)
#: Outcomes the requester hears about, in the order they can happen.
DM_OUTCOMES = ("approved", "denied", "timed_out", "expired", "revoked", "failed")
_MARKS = ("reminded_ms", "warned_ms", *(f"dm_{o}" for o in DM_OUTCOMES))
#: Markers of the session notes: the summary line, then (policy permitting) the transcript.
SESSION_MARKS = ("session_noted_ms", "session_transcript_ms")
DM_CHANNEL_TTL_S = 86400


# ------------------------------------------------------------------ what is owed (pure)


def owed_outcomes(req: AccessRequest) -> list[str]:
    """Every outcome the request has reached that its requester is told about."""
    s = req.status
    out = []
    if s in (Status.APPROVED, Status.ACTIVE, Status.EXPIRED, Status.REVOKED, Status.FAILED) or (
        s == Status.CANCELLED and req.decided_by
    ):
        out.append("approved")
    if s == Status.DENIED:
        out.append("denied")
    elif s == Status.TIMED_OUT:
        out.append("timed_out")
    elif s == Status.EXPIRED:
        out.append("expired")
    elif s == Status.FAILED:
        out.append("failed")
    elif s == Status.REVOKED and not (
        (req.revoked_by or "").startswith("pipeline:") or req.revoked_by == req.requester_slack_id
    ):
        out.append("revoked")  # the pipeline (or the requester) releasing its own grant is no news to them
    return out


def warning_at(req: AccessRequest, before: timedelta):
    return req.expires_at - before if req.expires_at else None


def warned(req: AccessRequest, before: timedelta) -> bool:
    """Whether `req`'s window is long enough to be warned `before` its end."""
    if req.expires_at is None or req.issued_at is None:
        return False
    return req.expires_at - req.issued_at > max(MIN_WARNED_WINDOW, before)


def dm_text(req: AccessRequest, outcome: str) -> str:
    return fit(_dm_text(req, outcome), MAX_MESSAGE_TEXT)


def _dm_text(req: AccessRequest, outcome: str) -> str:
    what = f"access request {code(req.id, 64)} for {code(req.action, 64)} ({code(req.pipeline, 64)})"
    if outcome == "approved":
        if req.decided_by == "auto":
            return f":white_check_mark: Your {what} was approved automatically by policy."
        who = ", ".join(mention(u) for u in req.approved_by) or (mention(req.decided_by) if req.decided_by else "")
        return f":white_check_mark: Your {what} was approved{' by ' + who if who else ''}."
    if outcome == "denied":
        who = mention(req.decided_by) if req.decided_by else "an approver"
        return f":x: Your {what} was denied by {who}: {literal(req.deny_reason, 500) or '—'}"
    if outcome == "timed_out":
        waited = human(req.pending_until - req.created_at)
        return f":alarm_clock: Your {what} timed out: nobody decided within {waited}."
    if outcome == "expired":
        return f":lock: The grant from your {what} expired and was revoked."
    if outcome == "revoked":
        by = f" by {mention(req.revoked_by)}" if req.revoked_by else ""
        return f":no_entry: The grant from your {what} was revoked early{by}."
    return (
        f":warning: Your {what} was approved, but the credential could not be issued: {literal(req.error, 300) or '—'}"
    )


def reminder_text(req: AccessRequest, approvers: list[str] | None) -> str:
    left = human(req.pending_until - now())
    who = " ".join(mention(a) for a in approvers or [] if a not in req.approved_by)
    got = f"{len(req.approvals)} of {req.approvals_required} approvals"
    return fit(
        f":bell: Still waiting for approval ({got}); this request times out in {left}." + (f" {who}" if who else ""),
        MAX_MESSAGE_TEXT,
    )


def warning_text(req: AccessRequest) -> str:
    left = "?"
    if req.expires_at:
        seconds = max((req.expires_at - now()).total_seconds(), 0)
        left = f"{math.ceil(seconds / 60)} min" if seconds >= 60 else human(seconds)
    at = f" (at {slack_date(req.expires_at)})" if req.expires_at else ""
    return f":hourglass: This grant expires in {left}{at}."


# ------------------------------------------------------------------ scheduling


def schedule(rt, req: AccessRequest) -> None:
    """Queue the notes `req` owes now (idempotent). Called by the `slack:` job after each transition."""
    for user in rt.decisions.oncall_to_page(req):  # `dm: true` on-call entries: once per person
        rt.notices.queue(user, oncall_page_text(req, req.channel))
    marks = dict.fromkeys(_MARKS) | rt.store.fields_of(req, *_MARKS)
    at: dict[str, int] = {}
    if req.status == Status.PENDING and not marks["reminded_ms"]:
        at[f"remind:{req.id}"] = to_ms(req.reminder_at)
    before = rt.settings.jit_warn_before
    if req.status == Status.ACTIVE and warned(req, before) and not marks["warned_ms"]:
        at[f"warn:{req.id}"] = to_ms(warning_at(req, before))
    if req.requester_slack_id and any(not marks[f"dm_{o}"] for o in owed_outcomes(req)):
        at[f"dm:{req.id}"] = now_ms() + LEASE_MS  # due now; the lease covers the job kicked below
    # Notes for a state the request has left would do nothing when due: drop them now.
    stale = []
    if req.status != Status.PENDING:
        stale.append(f"remind:{req.id}")
    if req.status != Status.ACTIVE:
        stale.append(f"warn:{req.id}")
    pipe = rt.redis.pipeline(transaction=False)  # one round trip for what is dropped and added
    pipe.zrem(keys.due(), *stale)
    for member, score in at.items():
        pipe.zadd(keys.due(), {member: score}, nx=True)
    added = pipe.execute()[1:]
    new = [m for m, n in zip(at, added, strict=True) if n]
    if not new:
        return
    kicked = [(m, secrets.token_hex(8)) for m in new if m.startswith("dm:")]
    pipe = rt.redis.pipeline(transaction=False)
    pipe.rpush(keys.due_wake(), "1")
    pipe.ltrim(keys.due_wake(), -16, -1)
    for member, token in kicked:  # claimed for the job kicked now; its lease covers a loss
        pipe.hset(keys.due_claims(), member, token)
    pipe.execute()
    rt.dispatcher.kick_many(kicked)


# ------------------------------------------------------------------ the due handlers


def do_remind(rt, rid: str) -> None:

    req = rt.store.get(rid)
    if req is None or req.status != Status.PENDING:
        return
    if now() < req.reminder_at:
        raise RetryLater(to_ms(req.reminder_at) - now_ms())
    if not req.message_ts:
        raise RetryLater(1000)  # the thread does not exist yet (its post waits for a slot)
    action = rt.policy.action(req.action)
    with _NoticeLock(rt, rid):
        if rt.redis.hget(keys.request(rid), "reminded_ms"):
            return
        req = rt.store.get(rid)
        if req is None or req.status != Status.PENDING:
            return
        _send_once(
            rt,
            req,
            "reminded_ms",
            lambda: _post_in_thread(rt, req, reminder_text(req, action.approvers if action else None)),
        )


def do_warn(rt, rid: str) -> None:

    req = rt.store.get(rid)
    if req is None or req.status != Status.ACTIVE or req.expires_at is None or not req.message_ts:
        return
    before = rt.settings.jit_warn_before
    if not warned(req, before):
        return
    if now() < warning_at(req, before):
        raise RetryLater(to_ms(warning_at(req, before)) - now_ms())
    if now() >= req.expires_at:
        return  # too late to warn; the expiry itself says it
    action = rt.policy.action(req.action)
    extendable = action is not None and action.extend is not None
    with _NoticeLock(rt, rid):
        if rt.redis.hget(keys.request(rid), "warned_ms"):
            return
        text = warning_text(req)

        def post() -> None:
            resp = _post_in_thread(rt, req, text, warning_blocks(req, text, extendable))
            # its buttons belong to this request too (bot/decision/slack/middleware.py)
            rt.store.set_fields(req.id, warn_ts=str(resp.get("ts") or ""))

        _send_once(rt, req, "warned_ms", post)


def do_session(rt, rid: str) -> None:
    """The session record's line in the thread, then, when the action's policy says
    `session: {transcript_in_slack: true}`, the masked transcript as a code block. Each once."""
    req = rt.store.get(rid)
    if req is None:
        return
    if not req.message_ts:
        raise RetryLater(1000)  # the thread does not exist yet (its post waits for a slot)
    record = rt.sessions.read(rid)
    if record is None:
        return
    action = rt.policy.action(req.action)
    with _NoticeLock(rt, rid):
        noted, shown = rt.redis.hmget(keys.request(rid), list(SESSION_MARKS))
        if not noted:
            _send_once(rt, req, "session_noted_ms", lambda: _post_in_thread(rt, req, session_line(req, record)))
        if action is not None and action.session.transcript_in_slack and not shown:
            _send_once(rt, req, "session_transcript_ms", lambda: _post_in_thread(rt, req, transcript_message(record)))


def do_dm(rt, rid: str) -> None:
    req = rt.store.get(rid)
    if req is None or not req.requester_slack_id:
        return
    with _NoticeLock(rt, rid):
        req = rt.store.get(rid)
        if req is None:
            return
        owed = owed_outcomes(req)
        marks = rt.redis.hmget(keys.request(rid), [f"dm_{o}" for o in owed]) if owed else []
        for outcome, mark in zip(owed, marks, strict=True):
            if not mark:
                _send_once(rt, req, f"dm_{outcome}", lambda o=outcome: _send_dm(rt, req, dm_text(req, o)))


# ------------------------------------------------------------------ sending


class _NoticeLock:
    """redis-py's Lock (token-checked release); busy → come back in 300 ms."""

    def __init__(self, rt, rid: str) -> None:
        self.lock = rt.redis.lock(keys.notice_lock(rid), timeout=30, blocking=False)

    def __enter__(self):

        if not self.lock.acquire():
            raise RetryLater(300)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.lock.release()
        except LockError:  # expired (a slow Slack call) and maybe taken by someone else: not ours
            pass


def _send_once(rt, req: AccessRequest, mark: str, send) -> None:
    """Send, then record it. Slack refusing for good (ok=false: archived channel, unknown user)
    is recorded too, so the note is not retried forever; 429s and 5xx are retried."""
    try:
        send()
    except SlackApiError as e:
        if e.response is None or e.response.status_code != 200:
            raise
        error = e.response.get("error") or "error"
        log.warning("%s for %s not sent: %s", mark, req.id, error, extra={"request_id": req.id})
        rt.store.set_fields(req.id, **{mark: f"error:{error}"})
        return
    rt.store.set_fields(req.id, **{mark: str(now_ms())})


def _post_in_thread(rt, req: AccessRequest, text: str, blocks: list | None = None):

    channel = rt.redis.hget(keys.request(req.id), "message_channel") or req.channel
    take_slot(rt, channel)
    extra = {"blocks": blocks} if blocks else {}
    return call_slack(
        rt, channel, rt.slack.chat_postMessage, channel=channel, thread_ts=req.message_ts, text=text, **extra
    )


def _send_dm(rt, req: AccessRequest, text: str) -> None:

    user = req.requester_slack_id
    channel = rt.redis.get(keys.dm_channel(user))
    if not channel:
        resp = call_slack(rt, user, rt.slack.conversations_open, users=user)
        channel = resp["channel"]["id"]
        rt.redis.set(keys.dm_channel(user), channel, ex=DM_CHANNEL_TTL_S)
    take_slot(rt, channel)
    call_slack(rt, channel, rt.slack.chat_postMessage, channel=channel, text=text)


# ------------------------------------------------------------------ the due handlers' entry points


def dm(rt, rid: str, token: str) -> None:
    """`dm:<id>`."""
    do_dm(rt, rid)


def remind(rt, rid: str, token: str) -> None:
    """`remind:<id>`."""
    do_remind(rt, rid)


def warn(rt, rid: str, token: str) -> None:
    """`warn:<id>`."""
    do_warn(rt, rid)


def session(rt, rid: str, token: str) -> None:
    """`session:<id>`."""
    do_session(rt, rid)
