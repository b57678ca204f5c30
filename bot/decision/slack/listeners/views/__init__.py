"""Modal submissions: the reason for a denial, the justification for breaking glass, an extension."""

from __future__ import annotations

from slack_bolt import App

from bot.decision.slack.listeners.views.break_glass import break_glass_submitted
from bot.decision.slack.listeners.views.deny import deny_submitted
from bot.decision.slack.listeners.views.extend import extend_submitted
from bot.decision.slack.views.blocks import BREAK_GLASS_MODAL, DENY_MODAL, EXTEND_MODAL


def register(app: App) -> None:
    app.view(DENY_MODAL)(deny_submitted)
    app.view(BREAK_GLASS_MODAL)(break_glass_submitted)
    app.view(EXTEND_MODAL)(extend_submitted)
