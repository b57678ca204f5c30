"""App Home opened: remember the viewer and have a worker publish their Home tab."""

from __future__ import annotations

from slack_bolt import BoltContext


def home_opened(event: dict, context: BoltContext) -> None:
    if event.get("tab", "home") != "home":
        return  # the Messages tab: nothing to publish
    rt = context["jit"]
    rt.home_viewers.remember(event["user"])
    rt.effects.publish_home(event["user"])  # views.publish is a Slack call: a worker makes it
