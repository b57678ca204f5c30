"""bot/decision/slack/listeners/views/extend.py: the Extend modal's submission — applied at once
within the policy; a refusal comes back as an error on the ttl field (the modal stays open)."""

from __future__ import annotations

import json
from unittest.mock import MagicMock

import pytest
from extend_support import with_extend
from fakes.slack import view_submission
from unit_support import ask, context, grant_claim, interaction

from bot.decision.slack.listeners.views.extend import extend_submitted
from bot.decision.slack.views.blocks import (
    EXTEND_MODAL,
    EXTEND_REASON_BLOCK,
    EXTEND_REASON_INPUT,
    EXTEND_TTL_BLOCK,
    EXTEND_TTL_INPUT,
)


@pytest.fixture
def policy_file(policy_file):
    policy_file.write_text(with_extend(policy_file.read_text(), "read-secret", "{max_total: 30m}"))
    return policy_file


def active(rt, backend) -> str:
    rid = ask(rt, "read-secret")
    rt.decisions.approve(rid, "U0LEAD1")
    rt.grants.issue(rid, grant_claim(rt, rid), backend.backend_for)
    return rid


def submit(rt, rid: str, user: str, ttl: str, reason: str = "") -> MagicMock:
    meta = json.dumps({"id": rid, "channel": "C0APPROVALS", "ts": "1700000000.000100"})
    values = {EXTEND_TTL_BLOCK: {EXTEND_TTL_INPUT: ttl}, EXTEND_REASON_BLOCK: {EXTEND_REASON_INPUT: reason}}
    body = interaction(view_submission(EXTEND_MODAL, meta, values, user))
    ack = MagicMock()
    extend_submitted(ack=ack, body=body, view=body["view"], context=context(rt))
    return ack


def test_an_extension_within_policy_applies_and_closes_the_modal(rt, backend):
    rid = active(rt, backend)
    before = rt.store.get(rid).expires_at
    submit(rt, rid, "U0LEAD1", "5m", "still migrating").assert_called_once_with()
    assert (rt.store.get(rid).expires_at - before).total_seconds() == 300


def test_refusals_keep_the_modal_open_and_change_nothing(rt, backend):
    rid = active(rt, backend)
    before = rt.store.get(rid).expires_at
    for user, ttl, words in [
        ("U0LEAD1", "soon", "not a duration"),
        ("U0LEAD1", "1h", "max_total"),
        ("U0STRANGER", "5m", "not an approver"),
    ]:
        ack = submit(rt, rid, user, ttl)
        assert ack.call_args.kwargs["response_action"] == "errors"
        assert words in ack.call_args.kwargs["errors"][EXTEND_TTL_BLOCK]
    assert rt.store.get(rid).expires_at == before
