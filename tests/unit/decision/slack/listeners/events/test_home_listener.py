"""bot/decision/slack/listeners/events/home.py: App Home opened — remember the viewer and leave
`views.publish` to a worker (a Slack call never runs in the request thread)."""

from __future__ import annotations

from fakes.slack import app_home_opened
from unit_support import context, event

from bot.decision.slack.listeners.events.home import home_opened
from workers.jobs.notify.home import publish_home
from workers.queue.dispatch import SLACK_QUEUE


def queued_home_jobs(rt) -> list[tuple]:
    jobs = rt.dispatcher.queues[SLACK_QUEUE].get_jobs()
    return [job.args for job in jobs if job.func_name.endswith(publish_home.__name__)]


def test_opening_the_home_tab_queues_its_publication(rt):
    home_opened(event=event(app_home_opened("U0LEAD1")), context=context(rt))
    assert rt.home_viewers.recent() == ["U0LEAD1"]
    assert queued_home_jobs(rt) == [("U0LEAD1",)]


def test_the_messages_tab_publishes_nothing(rt):
    home_opened(event=event(app_home_opened("U0LEAD1", tab="messages")), context=context(rt))
    assert rt.home_viewers.recent() == [] and queued_home_jobs(rt) == []
