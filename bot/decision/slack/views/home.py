"""App Home: a live dashboard per viewer — what waits for their approval, what is live, and
(for auditors) the latest audit events and the chain head. Re-published when opened and
when a request changes, for whoever opened it recently."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import LockError
from slack_sdk.errors import SlackApiError

from bot.store import keys
from bot.store.audit import AuditEntry
from bot.core.clock import now_ms
from bot.core.model import AccessRequest, Status
from bot.wiring import Runtime
from bot.decision.slack.views.answers import active_line, pending_line
from bot.decision.slack.views.audit_view import chunk_lines, event_line
from bot.decision.slack.views.blocks import APPROVE, DENY, revoke_button
from workers.jobs.notify.notices import undelivered_alerts
from bot.decision.slack.views.text import MAX_VIEW_BLOCKS, button, code, context, header, literal, section

log = logging.getLogger("jit.slack")

MAX_BLOCKS = MAX_VIEW_BLOCKS  # Slack's limit for a Home view
PENDING_CAP = 20  # two blocks each
ACTIVE_CAP = 15
EVENTS_SHOWN = 10
OPEN_READ = 500
VIEWER_TTL_MS = 3600_000  # Home is re-published for people who opened it within the hour
MAX_VIEWERS = 50
REFRESH_BUDGET_S = 20.0


@dataclass
class HomeData:
    """What every viewer's Home is built from, read once per refresh."""

    open_requests: list[AccessRequest]
    open_total: int
    latest: list[AuditEntry]
    head: dict[str, str]


def load(rt: Runtime) -> HomeData:
    return HomeData(
        open_requests=rt.store.get_many(rt.store.open_ids(limit=OPEN_READ)),
        open_total=rt.redis.zcard(keys.open_requests()),
        latest=rt.audit.latest(EVENTS_SHOWN),
        head=rt.audit.head(),
    )


# ------------------------------------------------------------------------- rendering


def _decide_buttons(req: AccessRequest) -> dict[str, Any]:
    return {
        "type": "actions",
        "block_id": f"home:decide:{req.id}",
        "elements": [button(APPROVE, "Approve", req.id, "primary"), button(DENY, "Deny", req.id, "danger")],
    }


def _awaits(rt: Runtime, req: AccessRequest, user: str, approver_of: dict[str, bool]) -> bool:
    """Pending, the viewer may approve it, and their approval would still count."""
    if req.status != Status.PENDING or user in req.approved_by:
        return False
    if req.action not in approver_of:
        approver_of[req.action] = rt.access.is_approver(req.action, user)
    if not approver_of[req.action] or not rt.access.is_approver(req.action, user, req):
        return False
    return not (req.requester_slack_id == user and not rt.access.self_approval_allowed(req))


def home_view(rt: Runtime, user: str, data: HomeData | None = None) -> dict[str, Any]:
    data = data or load(rt)
    approver_of: dict[str, bool] = {}
    waiting = [r for r in data.open_requests if _awaits(rt, r, user, approver_of)]
    active = [r for r in data.open_requests if r.status == Status.ACTIVE]

    blocks: list[dict[str, Any]] = [header("Waiting for your approval")]
    if waiting:
        for r in waiting[:PENDING_CAP]:
            blocks += [section(pending_line(r)), _decide_buttons(r)]
        if len(waiting) > PENDING_CAP:
            blocks.append(
                context(
                    f"…and {len(waiting) - PENDING_CAP} more waiting for you (`/jit status` lists them)"
                )
            )
    else:
        blocks.append(section("Nothing is waiting for your approval."))

    blocks += [{"type": "divider"}, header(f"Active grants ({len(active)})")]
    if active:
        for r in active[:ACTIVE_CAP]:
            if r.action not in approver_of:
                approver_of[r.action] = rt.access.is_approver(r.action, user)
            may_revoke = approver_of[r.action]
            blocks.append(section(active_line(r), revoke_button(r) if may_revoke else None))
        if len(active) > ACTIVE_CAP:
            blocks.append(context(f"…and {len(active) - ACTIVE_CAP} more active grants"))
    else:
        blocks.append(section("No grants are active."))
    if data.open_total > len(data.open_requests):
        blocks.append(
            context(
                f"Showing the newest {len(data.open_requests)} of {data.open_total} open requests."
            )
        )

    if rt.access.is_auditor(user):
        late = undelivered_alerts(rt)
        if late:
            blocks += [
                {"type": "divider"},
                section(
                    f":rotating_light: *{len(late)} alert(s) not delivered* — Slack has not taken "
                    "them for over a minute; jit keeps retrying (`jit_undelivered_alerts`)."
                ),
            ]
        blocks += [{"type": "divider"}, header("Audit trail")]
        head = data.head
        if head:
            blocks.append(
                section(f"*Chain head* #{literal(head.get('seq'), 20)} {code(head.get('hash', ''), 64)}")
            )
        if data.latest:
            blocks += chunk_lines([event_line(e.body) for e in data.latest], 4)
        else:
            blocks.append(section("No audit events yet."))
        blocks.append(context("`/jit audit` for more; `jit audit verify` checks the whole chain."))

    blocks.append(
        context(f"Updated <!date^{now_ms() // 1000}^{{time_secs}}|just now> · `/jit help`")
    )
    if len(blocks) > MAX_BLOCKS:  # the caps above keep well inside; never let Slack refuse the view
        blocks = blocks[: MAX_BLOCKS - 1] + [context("…more not shown")]
    return {"type": "home", "blocks": blocks}


# ------------------------------------------------------------------------- publishing


def publish_home(rt: Runtime, user: str, data: HomeData | None = None) -> bool:
    """views.publish for one user. Slack trouble is logged, never raised (it is a dashboard)."""
    try:
        rt.slack.views_publish(user_id=user, view=home_view(rt, user, data))
        return True
    except SlackApiError as e:
        log.warning("views.publish for %s failed: %s", user, e.response.get("error"))
    except Exception as e:  # noqa: BLE001
        log.warning("views.publish for %s failed: %s", user, type(e).__name__)
    return False


def remember_viewer(rt: Runtime, user: str) -> None:
    """Note who has Home open, so request changes re-publish it for them."""
    t = now_ms()
    key = keys.home_viewers()
    pipe = rt.redis.pipeline()
    pipe.zadd(key, {user: t})
    pipe.zremrangebyscore(key, "-inf", t - VIEWER_TTL_MS)
    pipe.zremrangebyrank(key, 0, -MAX_VIEWERS - 1)
    pipe.pexpire(key, VIEWER_TTL_MS)
    pipe.execute()


def recent_viewers(rt: Runtime) -> list[str]:
    return rt.redis.zrangebyscore(keys.home_viewers(), now_ms() - VIEWER_TTL_MS, "+inf")


def home_opened(rt: Runtime, user: str) -> None:
    remember_viewer(rt, user)
    publish_home(rt, user)


def publish_home_job(user: str) -> None:
    """RQ job: publish one user's Home tab (the `app_home_opened` listener enqueues it)."""
    from bot.wiring import current

    publish_home(current(), user)


def refresh_homes(rt: Runtime) -> int:
    """Re-publish Home for recent viewers, coalescing bursts: while one worker publishes, others
    only mark the views stale, and that worker goes round again. Returns views published."""
    if not rt.redis.exists(keys.home_viewers()):
        return 0
    rt.redis.set(keys.home_refresh_pending(), "1", px=60_000)
    published = 0
    deadline = time.monotonic() + REFRESH_BUDGET_S
    while time.monotonic() < deadline:
        lock = rt.redis.lock(keys.home_refresh_lock(), timeout=60, blocking=False)
        if not lock.acquire():
            return published  # the holder sees the stale mark and goes round again
        try:
            if not rt.redis.getdel(keys.home_refresh_pending()):
                return published
            data = load(rt)
            for user in recent_viewers(rt):
                published += publish_home(rt, user, data)
        finally:
            try:
                lock.release()
            except LockError:  # it expired (a slow refresh) and maybe someone else holds it now
                pass
    return published


def refresh_homes_quietly(rt: Runtime) -> None:
    """For the end of a Slack job: a Home refresh must never fail the job that called it."""
    try:
        refresh_homes(rt)
    except Exception as e:  # noqa: BLE001
        log.warning("App Home refresh failed: %s", type(e).__name__)
