"""`/jit …` slash commands: help, status, audit, revoke — answered in the ack body (ephemeral)."""

from __future__ import annotations

from slack_bolt import App

from bot.decision.slack.listeners.commands.jit import jit_command


def register(app: App) -> None:
    app.command("/jit")(jit_command)
