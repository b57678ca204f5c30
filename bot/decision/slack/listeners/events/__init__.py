"""Events API: App Home opened; a user group's members or settings changed."""

from __future__ import annotations

from slack_bolt import App

from bot.decision.slack.listeners.events.directory import group_changed, members_changed
from bot.decision.slack.listeners.events.home import home_opened


def register(app: App) -> None:
    app.event("app_home_opened")(home_opened)
    app.event("subteam_members_changed")(members_changed)
    app.event("subteam_updated")(group_changed)
