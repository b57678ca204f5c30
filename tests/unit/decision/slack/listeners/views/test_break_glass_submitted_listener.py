"""bot/decision/slack/listeners/views/break_glass.py: the break-glass modal's submission — a
written justification, then the approval alone; a refusal shows on the justification field."""

from __future__ import annotations

import json
from unittest.mock import MagicMock

from fakes.slack import view_submission
from unit_support import ask, context, interaction

from bot.core.model import Status
from bot.decision.slack.listeners.views.break_glass import break_glass_submitted
from bot.decision.slack.views.blocks import BREAK_GLASS_MODAL, JUSTIFICATION_BLOCK, JUSTIFICATION_INPUT


def submit(rid: str, user: str, text: str) -> dict:
    meta = json.dumps({"id": rid, "channel": "C0PROD", "ts": "1700000000.000100"})
    values = {JUSTIFICATION_BLOCK: {JUSTIFICATION_INPUT: text}}
    return interaction(view_submission(BREAK_GLASS_MODAL, meta, values, user))


def call(rt, body: dict) -> MagicMock:
    ack = MagicMock()
    break_glass_submitted(ack=ack, body=body, view=body["view"], context=context(rt))
    return ack


def test_a_justified_break_glass_approves_alone(rrt):
    rid = ask(rrt)
    ack = call(rrt, submit(rid, "U0ONCALL", "INC-12: database on fire, restore now"))
    ack.assert_called_once_with()
    req = rrt.store.get(rid)
    assert (req.status, req.decided_by) == (Status.APPROVED, "U0ONCALL")


def test_a_short_justification_keeps_the_modal_open(rrt):
    rid = ask(rrt)
    ack = call(rrt, submit(rid, "U0ONCALL", "urgent"))
    assert ack.call_args.kwargs["response_action"] == "errors"
    assert "justification" in ack.call_args.kwargs["errors"][JUSTIFICATION_BLOCK]
    assert rrt.store.get(rid).status == Status.PENDING


def test_a_submission_by_someone_else_is_refused(rrt):
    """The modal opened for a break-glass approver; a submission by anyone else is checked anew."""
    rid = ask(rrt)
    ack = call(rrt, submit(rid, "U0LEAD1", "INC-12: database on fire, restore now"))
    errors = ack.call_args.kwargs["errors"]
    assert "not a break-glass approver" in errors[JUSTIFICATION_BLOCK]
    assert len(errors[JUSTIFICATION_BLOCK]) <= 150, "Slack shows short field errors only"
    assert rrt.store.get(rid).status == Status.PENDING
