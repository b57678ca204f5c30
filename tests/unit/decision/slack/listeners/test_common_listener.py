"""bot/decision/slack/listeners/common.py: who clicked what, where — and a private note for them,
owed through the due queue (never a Slack call in the request thread)."""

from __future__ import annotations

from fakes.slack import block_action
from unit_support import interaction, told

from bot.decision.slack.listeners.common import click_channel, clicked, tell


def test_a_click_in_a_channel_message():
    body = interaction(block_action("jit_approve", "abc123", "U0LEAD1", channel="C0PROD"))
    assert clicked(body) == ("U0LEAD1", "abc123")
    assert click_channel(body) == "C0PROD"


def test_a_click_in_the_home_tab_has_no_channel():
    body = interaction(block_action("jit_approve", "abc123", "U0LEAD1", view={"id": "V1", "type": "home"}))
    assert click_channel(body) is None


def test_a_note_without_a_channel_goes_to_the_user(rt):
    tell(rt, None, "U0LEAD1", "hello")
    (note,) = told(rt)
    assert (note["channel"], note["user"], note["text"]) == ("U0LEAD1", "U0LEAD1", "hello")
    assert note["not_after_ms"] - note["owed_ms"] == 60_000, "useful for a minute only"
