"""bot/decision/slack/listeners/actions/approve.py: the Approve button, called as Bolt calls it.

`ack` first (Slack gives 3 s), then one atomic approval; the clicker hears privately how it went
(a refusal, or how many approvals are still needed)."""

from __future__ import annotations

from unittest.mock import MagicMock

from fakes.slack import block_action
from unit_support import ask, context, interaction, told

from bot.core.model import Status
from bot.decision.slack.listeners.actions.approve import approve
from bot.decision.slack.views.blocks import APPROVE


def click(rid: str, user: str, channel: str = "C0PROD") -> dict:
    return interaction(block_action(APPROVE, rid, user, channel=channel, message_ts="1700000000.000100"))


def test_an_approval_is_acked_first_then_recorded_and_the_clicker_hears_how_many_are_left(rt):
    rid = ask(rt)  # deploy-prod: 2 approvals
    approvals_at_ack = []
    ack = MagicMock(side_effect=lambda *a, **kw: approvals_at_ack.append(len(rt.store.get(rid).approvals)))
    approve(ack=ack, body=click(rid, "U0LEAD1"), context=context(rt))
    ack.assert_called_once_with()
    assert approvals_at_ack == [0], "acked before the work"
    assert rt.store.get(rid).approved_by == ["U0LEAD1"]
    (note,) = told(rt)
    assert (note["user"], note["channel"]) == ("U0LEAD1", "C0PROD")
    assert note["text"] == "Thanks — your approval is recorded; 1 more needed."


def test_the_last_approval_approves_without_a_private_note(rt):
    rid = ask(rt)
    approve(ack=MagicMock(), body=click(rid, "U0LEAD1"), context=context(rt))
    approve(ack=MagicMock(), body=click(rid, "U0LEAD2"), context=context(rt))
    assert rt.store.get(rid).status == Status.APPROVED
    assert [n["user"] for n in told(rt)] == ["U0LEAD1"], "the message itself shows the approval"


def test_a_refused_approval_is_told_to_the_clicker_only(rt):
    rid = ask(rt, requested_by="alice")
    ack = MagicMock()
    approve(ack=ack, body=click(rid, "U0ALICE"), context=context(rt))
    ack.assert_called_once_with()
    assert rt.store.get(rid).approvals == []
    (note,) = told(rt)
    assert note["user"] == "U0ALICE" and "someone else has to approve it" in note["text"]


def test_a_stranger_clicking_is_refused(rt):
    rid = ask(rt)
    approve(ack=MagicMock(), body=click(rid, "U0STRANGER"), context=context(rt))
    assert rt.store.get(rid).approvals == []
    assert "not an approver" in told(rt)[0]["text"]


def test_the_button_value_is_only_a_lookup_key(rt):
    approve(ack=MagicMock(), body=click("0000000000000000", "U0LEAD1"), context=context(rt))
    assert told(rt)[0]["text"] == "That request no longer exists."
