"""bot/decision/slack/listeners/views/deny.py: the deny modal's submission. A reason is required;
a refusal comes back as an error on the reason field (the modal stays open)."""

from __future__ import annotations

import json
from unittest.mock import MagicMock

from fakes.slack import view_submission
from unit_support import ask, context, interaction

from bot.core.model import Status
from bot.decision.slack.listeners.views.deny import deny_submitted
from bot.decision.slack.views.blocks import DENY_MODAL, DENY_REASON_BLOCK, DENY_REASON_INPUT


def submit(rid: str, user: str, reason: str) -> dict:
    meta = json.dumps({"id": rid, "channel": "C0PROD", "ts": "1700000000.000100"})
    return interaction(view_submission(DENY_MODAL, meta, {DENY_REASON_BLOCK: {DENY_REASON_INPUT: reason}}, user))


def call(rt, body: dict) -> MagicMock:
    ack = MagicMock()
    deny_submitted(ack=ack, body=body, view=body["view"], context=context(rt))
    return ack


def test_a_reason_denies_the_request_and_closes_the_modal(rt):
    rid = ask(rt)
    ack = call(rt, submit(rid, "U0LEAD1", "not during the freeze"))
    ack.assert_called_once_with()
    req = rt.store.get(rid)
    assert (req.status, req.decided_by, req.deny_reason) == (Status.DENIED, "U0LEAD1", "not during the freeze")


def test_a_blank_reason_keeps_the_modal_open_with_an_error(rt):
    rid = ask(rt)
    ack = call(rt, submit(rid, "U0LEAD1", "  \n "))
    ack.assert_called_once_with(response_action="errors", errors={DENY_REASON_BLOCK: "Please give a reason."})
    assert rt.store.get(rid).status == Status.PENDING


def test_a_refusal_is_shown_on_the_reason_field(rt):
    rid = ask(rt)
    rt.decisions.approve(rid, "U0LEAD1")
    rt.decisions.approve(rid, "U0LEAD2")
    ack = call(rt, submit(rid, "U0LEAD3", "too late?"))
    ack.assert_called_once_with(
        response_action="errors", errors={DENY_REASON_BLOCK: "This request is already approved."}
    )
    assert rt.store.get(rid).status == Status.APPROVED


def test_the_modal_metadata_is_checked_like_any_click(rt):
    """A forged private_metadata names another request: the submitter's authority is checked on
    that request, as for any click."""
    other = ask(rt, "read-secret")  # approvers: U0LEAD1, U0ALICE
    ack = call(rt, submit(other, "U0LEAD2", "forged"))
    assert ack.call_args.kwargs["response_action"] == "errors"
    assert "not an approver" in ack.call_args.kwargs["errors"][DENY_REASON_BLOCK]
    assert rt.store.get(other).status == Status.PENDING


def test_unreadable_metadata_names_no_request(rt):
    body = interaction(
        view_submission(DENY_MODAL, "{not json", {DENY_REASON_BLOCK: {DENY_REASON_INPUT: "no"}}, "U0LEAD1")
    )
    ack = call(rt, body)
    ack.assert_called_once_with(response_action="errors", errors={DENY_REASON_BLOCK: "That request no longer exists."})
