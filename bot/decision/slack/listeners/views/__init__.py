"""Modal submissions: the reason for a denial, the justification for breaking glass."""

from __future__ import annotations

from slack_bolt import App

from bot.decision.slack.listeners.views.break_glass import break_glass_submitted
from bot.decision.slack.listeners.views.deny import deny_submitted
from bot.decision.slack.views.blocks import BREAK_GLASS_MODAL, DENY_MODAL


def register(app: App) -> None:
    app.view(DENY_MODAL)(deny_submitted)
    app.view(BREAK_GLASS_MODAL)(break_glass_submitted)
