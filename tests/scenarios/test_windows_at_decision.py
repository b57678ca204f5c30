"""Change windows bind when access is decided and issued, not only when it is asked for: the last
approval must come inside a window, and a grant never outlasts the window it was issued in."""

from __future__ import annotations

from datetime import timedelta

import pytest
from freezegun import freeze_time

import workers.backends  # noqa: F401 - load C extensions before freezegun fakes datetime
from bot.core import errors as E
from bot.core.clock import now, now_ms
from bot.store.due import DueQueue

WINDOWED = """\
  office-hours:
    description: Only during office hours
    windows: ["mon-fri 09:00-18:00 UTC"]
    approvers: [U0LEAD1, U0LEAD2]
    ttl: {default: 1h, max: 2h}
    pending_timeout: 24h
    grant: {type: token, audience: office}
"""


@pytest.fixture
def windowed(policy_file):
    text = policy_file.read_text().replace(
        "actions: [deploy-prod, read-secret, quick]", "actions: [deploy-prod, read-secret, quick, office-hours]"
    )
    policy_file.write_text(text + WINDOWED)
    return policy_file


def grant_now(jit, rid):
    """The grant job runs (as a worker would, now)."""
    from workers import jobs

    member = f"grant:{rid}"
    claims = [c for c in DueQueue(jit.rt.redis).claim(now_ms() + 60_000) if c[0] == member]
    assert claims, "no grant was due"
    jobs.run_due(jit.rt, *claims[0])


def test_the_last_approval_must_come_inside_a_window(windowed, jit):
    with freeze_time("2026-12-02 17:59:00"):  # a Wednesday, one minute before closing
        rid = jit.ask("office-hours")["id"]
    with freeze_time("2026-12-02 18:25:00"):
        with pytest.raises(E.WindowClosed) as refused:
            jit.rt.decisions.approve(rid, "U0LEAD1")
        assert "2026-12-03T09:00:00.000Z" in refused.value.message
        assert jit.rt.store.get(rid).status == "pending"
    with freeze_time("2026-12-03 09:05:00"):  # the next morning it can be approved
        assert jit.rt.decisions.approve(rid, "U0LEAD1").result == "approved"


def test_a_grant_is_cut_at_the_end_of_its_window(windowed, jit):
    with freeze_time("2026-12-02 17:30:00"):
        rid = jit.ask("office-hours", ttl="1h")["id"]
        jit.rt.decisions.approve(rid, "U0LEAD1")
        grant_now(jit, rid)
        req = jit.rt.store.get(rid)
        assert req.status == "active"
        assert req.expires_at == now().replace(hour=18, minute=0, second=0, microsecond=0)
        assert jit.rt.decisions.message_facts(req)["cut_by_window"] is True
        jit.rt.audit.flush()
        issued = [e.body for e in jit.rt.audit.entries_for_request(rid) if e.body["event"] == "grant.issued"]
        assert issued[0]["details"]["cut_by_window"] is True and issued[0]["details"]["ttl_seconds"] == 1800
        token = jit.credential(rid).get_json()["credential"]["token"]
        assert jit.rt.signer.verify(token)["exp"] == int(req.expires_at.timestamp())


def test_a_window_that_closes_between_approval_and_grant_fails_the_grant(windowed, jit):
    with freeze_time("2026-12-02 17:59:58"):
        rid = jit.ask("office-hours")["id"]
        jit.rt.decisions.approve(rid, "U0LEAD1")
    with freeze_time("2026-12-02 18:00:01"):
        grant_now(jit, rid)
        body = jit.status(rid).get_json()
        assert body["status"] == "failed" and "window" in body["error"]
        assert jit.credential(rid).status_code == 410


def test_break_glass_is_not_bound_by_windows(windowed, jit, policy_file):
    policy_file.write_text(
        policy_file.read_text().replace(
            "auditors: [S0SECURITY, U0AUDITOR2]\n",
            "auditors: [S0SECURITY, U0AUDITOR2]\nbreak_glass:\n  approvers: [U0ONCALL]\n"
            "  security_channel: C0SECURITY\n  max_ttl: 10m\n",
            1,
        )
    )
    from bot.wiring import load_policy

    jit.rt.set_policy(load_policy(policy_file))
    with freeze_time("2026-12-02 22:00:00"):
        rid = jit.ask("office-hours", break_glass=True)["id"]
        jit.rt.decisions.break_glass(rid, "U0ONCALL", "INC-12: database on fire, restore now")
        grant_now(jit, rid)
        req = jit.rt.store.get(rid)
        assert req.status == "active" and req.expires_at - req.issued_at == timedelta(minutes=10)
