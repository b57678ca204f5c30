"""bot/decision/slack/views/text.py: the one case test_slack_rendering.py does not reach — an https
URL whose port cannot be read is shown as text, never as a link."""

from __future__ import annotations

from bot.decision.slack.views.text import link


def test_a_url_with_an_impossible_port_is_no_link():
    assert link("https://ci.example:99999/run", "View the run") == "View the run: https://ci.example:99999/run"
