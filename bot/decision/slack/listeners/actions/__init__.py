"""Button clicks: Approve (a request, or an extension of its grant), Deny (opens the reason modal),
Break glass (opens the justification modal), Revoke now, Release now, Extend (opens its modal)."""

from __future__ import annotations

from slack_bolt import App

from bot.decision.slack.listeners.actions.approve import approve
from bot.decision.slack.listeners.actions.break_glass import break_glass
from bot.decision.slack.listeners.actions.deny import deny
from bot.decision.slack.listeners.actions.extend import extend
from bot.decision.slack.listeners.actions.release import release
from bot.decision.slack.listeners.actions.revoke import revoke
from bot.decision.slack.views.blocks import APPROVE, BREAK_GLASS, DENY, EXTEND, RELEASE, REVOKE


def register(app: App) -> None:
    app.action(APPROVE)(approve)
    app.action(DENY)(deny)
    app.action(REVOKE)(revoke)
    app.action(BREAK_GLASS)(break_glass)
    app.action(RELEASE)(release)
    app.action(EXTEND)(extend)
