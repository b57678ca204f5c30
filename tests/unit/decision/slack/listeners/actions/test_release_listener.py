"""bot/decision/slack/listeners/actions/release.py: Release now ("I'm done") ends an active grant —
by its requester or an approver; a second click changes nothing."""

from __future__ import annotations

from unittest.mock import MagicMock

from fakes.slack import block_action
from unit_support import ask, context, grant_claim, interaction, told

from bot.core.model import Status
from bot.decision.slack.listeners.actions.release import release
from bot.decision.slack.views.blocks import RELEASE


def active(rt, backend, **over) -> str:
    rid = ask(rt, "read-secret", **over)
    rt.decisions.approve(rid, "U0LEAD1")
    rt.grants.issue(rid, grant_claim(rt, rid), backend.backend_for)
    return rid


def click(rid: str, user: str) -> dict:
    return interaction(block_action(RELEASE, rid, user, channel="C0APPROVALS", button_text="Release now"))


def test_the_requester_releases_and_a_second_click_is_told_it_is_over(rt, backend):
    rid = active(rt, backend, requested_by="alice")
    ack = MagicMock()
    release(ack=ack, body=click(rid, "U0ALICE"), context=context(rt))
    ack.assert_called_once_with()
    req = rt.store.get(rid)
    assert (req.status, req.revoked_by, req.revoke_pending) == (Status.REVOKED, "U0ALICE", True)
    release(ack=MagicMock(), body=click(rid, "U0LEAD1"), context=context(rt))
    assert rt.store.get(rid).revoked_by == "U0ALICE"
    assert "already ended" in told(rt)[0]["text"]


def test_an_approver_releases_a_pipeline_grant(rt, backend):
    rid = active(rt, backend)
    release(ack=MagicMock(), body=click(rid, "U0LEAD1"), context=context(rt))
    assert rt.store.get(rid).status == Status.REVOKED


def test_a_stranger_cannot_release(rt, backend):
    rid = active(rt, backend)
    release(ack=MagicMock(), body=click(rid, "U0STRANGER"), context=context(rt))
    assert rt.store.get(rid).status == Status.ACTIVE
    assert "not an approver" in told(rt)[0]["text"]


def test_a_pending_request_is_not_released_from_slack(rt):
    rid = ask(rt, "read-secret")
    release(ack=MagicMock(), body=click(rid, "U0LEAD1"), context=context(rt))
    assert rt.store.get(rid).status == Status.PENDING
    assert "Only an active grant" in told(rt)[0]["text"]
