"""bot/decision/slack/listeners/actions/break_glass.py: the Break glass button opens the
justification modal, stating the TTL cut — only for a break-glass approver."""

from __future__ import annotations

import json
from unittest.mock import MagicMock

from fakes.slack import block_action
from unit_support import ask, context, interaction, told

from bot.core.model import Status
from bot.decision.slack.listeners.actions.break_glass import break_glass
from bot.decision.slack.views.blocks import BREAK_GLASS, BREAK_GLASS_MODAL


def click(rid: str, user: str) -> dict:
    return interaction(
        block_action(BREAK_GLASS, rid, user, channel="C0PROD", message_ts="1700000000.000100", trigger_id="7.7.t")
    )


def test_a_break_glass_approver_gets_the_justification_modal(rrt):
    rid = ask(rrt, ttl="1h")
    ack, client = MagicMock(), MagicMock()
    break_glass(ack=ack, body=click(rid, "U0ONCALL"), client=client, context=context(rrt))
    ack.assert_called_once_with()
    view = client.views_open.call_args.kwargs["view"]
    assert client.views_open.call_args.kwargs["trigger_id"] == "7.7.t"
    assert view["callback_id"] == BREAK_GLASS_MODAL
    assert json.loads(view["private_metadata"])["id"] == rid
    assert "at most 10m" in view["blocks"][0]["text"]["text"]
    assert rrt.store.get(rid).status == Status.PENDING


def test_an_ordinary_approver_may_not_break_glass(rrt):
    rid = ask(rrt)
    client = MagicMock()
    break_glass(ack=MagicMock(), body=click(rid, "U0LEAD1"), client=client, context=context(rrt))
    client.views_open.assert_not_called()
    assert "not a break-glass approver" in told(rrt)[0]["text"]
