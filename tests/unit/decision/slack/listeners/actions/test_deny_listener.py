"""bot/decision/slack/listeners/actions/deny.py: the Deny button opens the reason modal — only for
someone who may deny; the denial itself is the modal's submission."""

from __future__ import annotations

import json
from unittest.mock import MagicMock

from fakes.slack import block_action
from unit_support import ask, context, interaction, told

from bot.core.model import Status
from bot.decision.slack.listeners.actions.deny import deny
from bot.decision.slack.views.blocks import DENY, DENY_MODAL


def click(rid: str, user: str) -> dict:
    return interaction(
        block_action(DENY, rid, user, channel="C0PROD", message_ts="1700000000.000100", trigger_id="13.42.trig")
    )


def test_an_approver_gets_the_reason_modal_for_that_request(rt):
    rid = ask(rt)
    ack, client = MagicMock(), MagicMock()
    deny(ack=ack, body=click(rid, "U0LEAD1"), client=client, context=context(rt))
    ack.assert_called_once_with()
    client.views_open.assert_called_once()
    kwargs = client.views_open.call_args.kwargs
    assert kwargs["trigger_id"] == "13.42.trig"
    assert kwargs["view"]["callback_id"] == DENY_MODAL
    meta = json.loads(kwargs["view"]["private_metadata"])
    assert meta == {"id": rid, "channel": "C0PROD", "ts": "1700000000.000100"}
    assert rt.store.get(rid).status == Status.PENDING, "nothing is denied until the reason is given"
    assert told(rt) == []


def test_someone_who_may_not_deny_gets_no_modal(rt):
    rid = ask(rt)
    client = MagicMock()
    deny(ack=MagicMock(), body=click(rid, "U0STRANGER"), client=client, context=context(rt))
    client.views_open.assert_not_called()
    assert "not an approver" in told(rt)[0]["text"]


def test_a_decided_request_opens_no_modal(rt):
    rid = ask(rt)
    rt.decisions.deny(rid, "U0LEAD2", "no")
    client = MagicMock()
    deny(ack=MagicMock(), body=click(rid, "U0LEAD1"), client=client, context=context(rt))
    client.views_open.assert_not_called()
    assert told(rt)[0]["text"] == "This request is already denied."
