"""Events API: App Home opened."""

from __future__ import annotations

from slack_bolt import App

from bot.runtime import Runtime
from bot.slack.home import home_opened


def register(app: App, rt: Runtime) -> None:
    @app.event("app_home_opened")
    def on_home_opened(event: dict) -> None:
        if event.get("tab", "home") != "home":
            return  # the Messages tab: nothing to publish
        home_opened(rt, event["user"])
