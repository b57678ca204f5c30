"""bot/decision/slack/views/home.py: the App Home stays within Slack's 100 blocks however much
waits, offers Revoke only where the viewer may revoke, and shows auditors what they need."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from unit_support import block_text

from bot.core.model import AccessRequest, Status
from bot.decision.slack.views.blocks import REVOKE
from bot.decision.slack.views.home import ACTIVE_CAP, MAX_BLOCKS, PENDING_CAP, HomeView, home_view

T = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


def request(i: int, status: Status) -> AccessRequest:
    return AccessRequest(
        id=f"r{i:015d}",
        action="deploy-prod",
        pipeline="web-ci",
        reason="release",
        ttl=timedelta(minutes=15),
        status=status,
        created_at=T,
        pending_until=T + timedelta(minutes=30),
        approvals_required=1,
        channel="C0PROD",
        expires_at=T + timedelta(minutes=15),
    )


def view(**over) -> HomeView:
    fields = {
        "waiting": [],
        "active": [],
        "may_revoke": set(),
        "open_total": 0,
        "open_read": 0,
        "auditor": False,
        "at_ms": 1_796_000_000_000,
    }
    return HomeView(**{**fields, **over})


def revoke_ids(v: dict) -> list[str]:
    return [b["accessory"]["value"] for b in v["blocks"] if b.get("accessory", {}).get("action_id") == REVOKE]


def test_long_lists_are_capped_within_slacks_limit():
    waiting = [request(i, Status.PENDING) for i in range(PENDING_CAP + 5)]
    active = [request(100 + i, Status.ACTIVE) for i in range(ACTIVE_CAP + 4)]
    out = home_view(view(waiting=waiting, active=active, open_total=900, open_read=500))
    text = block_text(out["blocks"])
    assert out["type"] == "home" and len(out["blocks"]) <= MAX_BLOCKS
    assert "…and 5 more waiting for you" in text
    assert "…and 4 more active grants" in text
    assert "Showing the newest 500 of 900 open requests." in text
    assert waiting[PENDING_CAP - 1].id in text and waiting[PENDING_CAP].id not in text


def test_revoke_is_offered_only_where_the_viewer_may_revoke():
    active = [request(1, Status.ACTIVE), request(2, Status.ACTIVE)]
    assert revoke_ids(home_view(view(active=active, may_revoke={active[1].id}))) == [active[1].id]


def test_auditors_see_late_alerts_the_chain_head_and_the_latest_events():
    latest = [{"time": "2026-12-02T10:00:00.000Z", "event": "request.created", "actor": "pipeline:web-ci"}]
    out = home_view(
        view(auditor=True, late_alerts=[("bgalert:r1", 1)], head={"seq": "3", "hash": "f" * 64}, latest=latest)
    )
    text = block_text(out["blocks"])
    assert ":rotating_light: *1 alert(s) not delivered*" in text
    assert f"*Chain head* #3 `{'f' * 64}`" in text
    assert "`request.created`" in text


def test_others_see_no_audit_section():
    text = block_text(home_view(view(late_alerts=[("bgalert:r1", 1)], head={"seq": "3"}))["blocks"])
    assert "Audit trail" not in text and "not delivered" not in text
    assert "Nothing is waiting for your approval." in text and "No grants are active." in text


def test_an_auditor_with_an_empty_trail():
    assert "No audit events yet." in block_text(home_view(view(auditor=True))["blocks"])
