"""bot/decision/slack/listeners/commands/jit.py: `/jit` and its subcommands, answered in the ack
(ephemeral) — and answered whatever happens, within Slack's 3 s."""

from __future__ import annotations

from unittest.mock import MagicMock

import pytest
from fakes.slack import slash_command
from unit_support import ask, command, context, grant_claim

from bot.core.model import Status
from bot.decision.slack.listeners.commands.jit import USAGE, jit_command


def run(rt, text: str, user: str = "U0LEAD1") -> dict:
    ack = MagicMock()
    jit_command(ack=ack, command=command(slash_command(text, user)), context=context(rt))
    ack.assert_called_once()
    assert ack.call_args.kwargs["response_type"] == "ephemeral", "answers are for the asker only"
    return ack.call_args.kwargs


@pytest.mark.parametrize("text", ["", "help", "  HELP  "])
def test_help(rt, text):
    assert run(rt, text)["text"] == USAGE


def test_an_unknown_subcommand_names_itself_and_shows_the_usage(rt):
    answer = run(rt, "frobnicate now")
    assert answer["text"].startswith("I don't know `/jit frobnicate`") and USAGE in answer["text"]


def test_revoke_ends_an_active_grant_for_an_approver(rt, backend):
    rid = ask(rt, "read-secret")
    rt.decisions.approve(rid, "U0LEAD1")
    rt.grants.issue(rid, grant_claim(rt, rid), backend.backend_for)
    assert run(rt, f"revoke {rid}", user="U0STRANGER")["text"].startswith("You are not an approver")
    assert rt.store.get(rid).status == Status.ACTIVE
    assert run(rt, f"revoke {rid} please")["text"].startswith(f"Revoking `{rid}`")
    assert rt.store.get(rid).status == Status.REVOKED


def test_revoke_without_an_id_explains_itself(rt):
    assert run(rt, "revoke")["text"].startswith("Usage: `/jit revoke")


def test_an_unexpected_failure_still_answers(rt, monkeypatch):
    def broken(*a, **kw):
        raise RuntimeError("redis went away")

    monkeypatch.setattr(rt.store, "get", broken)
    answer = run(rt, "status 0123456789abcdef")
    assert answer == {"response_type": "ephemeral", "text": answer["text"]}
    assert answer["text"].startswith("Sorry — jit could not answer just now")
    assert "redis" not in answer["text"]
