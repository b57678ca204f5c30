"""Events API: App Home opened; a user group's members or settings changed."""

from __future__ import annotations

from slack_bolt import App

from bot.wiring import Runtime
from bot.decision.slack.views.home import remember_viewer


def register(app: App, rt: Runtime) -> None:
    @app.event("app_home_opened")
    def on_home_opened(event: dict) -> None:
        if event.get("tab", "home") != "home":
            return  # the Messages tab: nothing to publish
        from workers.queue.scheduler import SLACK_QUEUE

        remember_viewer(rt, event["user"])
        # views.publish is a Slack call: a worker makes it, never the request thread
        rt.dispatcher.queues[SLACK_QUEUE].enqueue_call(
            "bot.decision.slack.views.home.publish_home_job", args=(event["user"],), result_ttl=0, failure_ttl=3600, ttl=600
        )


def register_directory_events(app: App, rt: Runtime) -> None:
    """Someone joined or left a user group (or it was disabled): membership used for approvals
    is looked up afresh at the next click, not up to a minute later."""

    @app.event("subteam_members_changed")
    def on_members_changed(event: dict) -> None:
        group = event.get("subteam_id")
        if isinstance(group, str) and group:
            rt.directory.forget(group)

    @app.event("subteam_updated")
    def on_group_updated(event: dict) -> None:
        group = (event.get("subteam") or {}).get("id")
        if isinstance(group, str) and group:
            rt.directory.forget(group)
