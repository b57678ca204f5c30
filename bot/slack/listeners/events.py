"""Events API: App Home opened."""

from __future__ import annotations

from slack_bolt import App

from bot.runtime import Runtime
from bot.slack.home import remember_viewer


def register(app: App, rt: Runtime) -> None:
    @app.event("app_home_opened")
    def on_home_opened(event: dict) -> None:
        if event.get("tab", "home") != "home":
            return  # the Messages tab: nothing to publish
        from workers.expiry import SLACK_QUEUE

        remember_viewer(rt, event["user"])
        # views.publish is a Slack call: a worker makes it, never the request thread
        rt.dispatcher.queues[SLACK_QUEUE].enqueue_call(
            "bot.slack.home.publish_home_job", args=(event["user"],), result_ttl=0, failure_ttl=3600, ttl=600
        )
