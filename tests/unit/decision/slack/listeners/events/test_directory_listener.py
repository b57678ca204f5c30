"""bot/decision/slack/listeners/events/directory.py: a user group changed — its cached members are
dropped, so the next click is checked against Slack afresh (off-boarding bites at once)."""

from __future__ import annotations

import pytest
from fakes.slack import event_callback
from unit_support import context, event

from bot.decision.slack.listeners.events.directory import group_changed, members_changed
from bot.store import keys


@pytest.fixture
def cached(rt):
    assert rt.directory.members("S0PRODLEADS") == {"U0LEAD3", "U0LEAD4"}
    assert rt.redis.exists(keys.usergroup_members("S0PRODLEADS"))
    return rt


def test_a_member_change_drops_the_group_from_the_cache(cached):
    changed = {
        "type": "subteam_members_changed",
        "subteam_id": "S0PRODLEADS",
        "added_users": [],
        "removed_users": ["U0LEAD4"],
    }
    members_changed(event=event(event_callback(changed)), context=context(cached))
    assert not cached.redis.exists(keys.usergroup_members("S0PRODLEADS"))


def test_a_group_update_drops_the_group_from_the_cache(cached):
    updated = {"type": "subteam_updated", "subteam": {"id": "S0PRODLEADS", "date_delete": 1700000000}}
    group_changed(event=event(event_callback(updated)), context=context(cached))
    assert not cached.redis.exists(keys.usergroup_members("S0PRODLEADS"))


@pytest.mark.parametrize("bad", [{}, {"subteam_id": ""}, {"subteam_id": ["S0PRODLEADS"]}, {"subteam": None}])
def test_an_event_naming_no_group_changes_nothing(cached, bad):
    members_changed(event={"type": "subteam_members_changed", **bad}, context=context(cached))
    group_changed(event={"type": "subteam_updated", **bad}, context=context(cached))
    assert cached.redis.exists(keys.usergroup_members("S0PRODLEADS"))
