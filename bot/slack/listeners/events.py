"""Events API: App Home opened."""

from __future__ import annotations

from slack_bolt import App

from bot.runtime import Runtime


def register(app: App, rt: Runtime) -> None:
    @app.event("app_home_opened")
    def home_opened(event: dict, logger) -> None:
        try:
            from bot.slack.home import publish_home
        except ImportError:
            return
        publish_home(rt, event["user"])
