"""bot/decision/slack/listeners/actions/revoke.py: Revoke now ends an active grant at once — only
by an approver."""

from __future__ import annotations

from unittest.mock import MagicMock

from fakes.slack import block_action
from unit_support import ask, context, grant_claim, interaction, told

from bot.core.model import Status
from bot.decision.slack.listeners.actions.revoke import revoke
from bot.decision.slack.views.blocks import REVOKE


def active(rt, backend) -> str:
    rid = ask(rt, "read-secret")
    rt.decisions.approve(rid, "U0LEAD1")
    rt.grants.issue(rid, grant_claim(rt, rid), backend.backend_for)
    return rid


def click(rid: str, user: str) -> dict:
    return interaction(block_action(REVOKE, rid, user, channel="C0APPROVALS", button_text="Revoke now"))


def test_an_approver_revokes_an_active_grant_at_once(rt, backend):
    rid = active(rt, backend)
    ack = MagicMock()
    revoke(ack=ack, body=click(rid, "U0ALICE"), context=context(rt))
    ack.assert_called_once_with()
    req = rt.store.get(rid)
    assert (req.status, req.revoked_by, req.revoke_pending) == (Status.REVOKED, "U0ALICE", True)
    assert told(rt) == []


def test_a_stranger_cannot_revoke(rt, backend):
    rid = active(rt, backend)
    revoke(ack=MagicMock(), body=click(rid, "U0STRANGER"), context=context(rt))
    assert rt.store.get(rid).status == Status.ACTIVE
    assert "not an approver" in told(rt)[0]["text"]
