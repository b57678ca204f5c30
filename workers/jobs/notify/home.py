"""Publishing App Home (views.publish): when someone opens it, and after a request changes, for
whoever opened it in the last hour. Bursts are coalesced: while one worker publishes, others only
mark the views stale, and that worker goes round again."""

from __future__ import annotations

import logging
import time

from redis.exceptions import LockError
from slack_sdk.errors import SlackApiError

from bot.core.clock import now_ms
from bot.core.model import AccessRequest, Status
from bot.decision.slack.views.home import HomeView, home_view
from bot.runtime import Runtime
from bot.store import keys

log = logging.getLogger("jit.slack")

EVENTS_SHOWN = 10
OPEN_READ = 500
REFRESH_BUDGET_S = 20.0


class HomeData:
    """What every viewer's Home is built from, read once per refresh."""

    def __init__(self, rt: Runtime) -> None:
        self.open_requests = rt.store.get_many(rt.store.open_ids(limit=OPEN_READ))
        self.open_total = rt.redis.zcard(keys.open_requests())
        self.latest = [e.body for e in rt.audit.latest(EVENTS_SHOWN)]
        self.head = rt.audit.head()
        self.late_alerts = rt.notices.undelivered()


def view_for(rt: Runtime, user: str, data: HomeData) -> HomeView:
    approver_of: dict[str, bool] = {}

    def approver(action: str) -> bool:
        if action not in approver_of:
            approver_of[action] = rt.rules.is_approver(action, user)
        return approver_of[action]

    def awaits(req: AccessRequest) -> bool:
        """Pending, the viewer may approve it, and their approval would still count."""
        if req.status != Status.PENDING or user in req.approved_by:
            return False
        if not approver(req.action) or not rt.rules.is_approver(req.action, user, req):
            return False
        return not (req.requester_slack_id == user and not rt.rules.self_approval_allowed(req))

    active = [r for r in data.open_requests if r.status == Status.ACTIVE]
    return HomeView(
        waiting=[r for r in data.open_requests if awaits(r)],
        active=active,
        may_revoke={r.id for r in active if approver(r.action)},
        open_total=data.open_total,
        open_read=len(data.open_requests),
        auditor=rt.rules.is_auditor(user),
        at_ms=now_ms(),
        latest=data.latest,
        head=data.head,
        late_alerts=data.late_alerts,
    )


def publish(rt: Runtime, user: str, data: HomeData | None = None) -> bool:
    """views.publish for one user. Slack trouble is logged, never raised (it is a dashboard)."""
    try:
        rt.slack.views_publish(user_id=user, view=home_view(view_for(rt, user, data or HomeData(rt))))
        return True
    except SlackApiError as e:
        log.warning("views.publish for %s failed: %s", user, e.response.get("error"))
    except Exception as e:  # noqa: BLE001
        log.warning("views.publish for %s failed: %s", user, type(e).__name__)
    return False


def publish_home(rt: Runtime, user: str) -> None:
    """RQ job: publish one user's Home tab (the `app_home_opened` listener asks for it)."""
    publish(rt, user)


def refresh_homes(rt: Runtime) -> int:
    """Re-publish Home for recent viewers. Returns views published."""
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
            data = HomeData(rt)
            for user in rt.home_viewers.recent():
                published += publish(rt, user, data)
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
