"""Bolt listeners, one folder per kind; each folder's `register(app)` wires its callbacks, which
are module-level functions that find the process's parts in Bolt's `context["jit"]`."""

from __future__ import annotations

from slack_bolt import App

from bot.decision.slack.listeners import actions, commands, events, views


def register(app: App) -> None:
    actions.register(app)
    views.register(app)
    commands.register(app)
    events.register(app)
