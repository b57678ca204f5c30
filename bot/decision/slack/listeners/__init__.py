"""Bolt listeners, one small module per kind; each module's `register` wires its callbacks."""

from __future__ import annotations

from slack_bolt import App

from bot.wiring import Runtime
from bot.decision.slack.listeners import actions, commands, events, views


def register(app: App, rt: Runtime) -> None:
    actions.register(app, rt)
    views.register(app, rt)
    commands.register(app, rt)
    events.register(app, rt)
    events.register_directory_events(app, rt)
