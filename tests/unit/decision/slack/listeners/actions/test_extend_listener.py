"""bot/decision/slack/listeners/actions/extend.py: Extend opens its modal — for an approver of an
active grant whose action may be extended; anyone else is told why, privately."""

from __future__ import annotations

import json
from unittest.mock import MagicMock

import pytest
from extend_support import with_extend
from fakes.slack import block_action
from unit_support import ask, context, grant_claim, interaction, told

from bot.decision.slack.listeners.actions.extend import extend
from bot.decision.slack.views.blocks import EXTEND, EXTEND_MODAL


@pytest.fixture
def policy_file(policy_file):
    policy_file.write_text(with_extend(policy_file.read_text(), "read-secret", "{max_total: 1h}"))
    return policy_file


def active(rt, backend, action="read-secret") -> str:
    rid = ask(rt, action)
    rt.decisions.approve(rid, "U0LEAD1")
    rt.grants.issue(rid, grant_claim(rt, rid), backend.backend_for)
    return rid


def click(rt, rid: str, user: str) -> MagicMock:
    client = MagicMock()
    body = interaction(block_action(EXTEND, rid, user, channel="C0APPROVALS", button_text="Extend", trigger_id="t.1"))
    extend(ack=MagicMock(), body=body, client=client, context=context(rt))
    return client


def test_an_approver_gets_the_modal_with_the_default_ttl(rt, backend):
    rid = active(rt, backend)
    client = click(rt, rid, "U0LEAD1")
    view = client.views_open.call_args.kwargs["view"]
    assert view["callback_id"] == EXTEND_MODAL and json.loads(view["private_metadata"])["id"] == rid
    assert view["blocks"][1]["element"]["initial_value"] == "10m"  # read-secret's default ttl


def test_refusals_open_nothing(rt, backend):
    rid = active(rt, backend)
    assert not click(rt, rid, "U0STRANGER").views_open.called
    assert "not an approver" in told(rt)[-1]["text"]
    pending = ask(rt, "read-secret", pipeline="other-ci")
    assert not click(rt, pending, "U0LEAD1").views_open.called
    assert "Only an active grant" in told(rt)[-1]["text"]
    quick = active(rt, backend, "quick")
    assert not click(rt, quick, "U0LEAD1").views_open.called
    assert "no `extend:`" in told(rt)[-1]["text"]
