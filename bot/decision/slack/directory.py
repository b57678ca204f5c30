"""Who is in a Slack user group, from `usergroups.users.list`, cached in Redis (Tier 2 method)."""

from __future__ import annotations

import logging

from redis import Redis
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.store import keys

log = logging.getLogger("jit.slack")

#: A click is never counted against membership older than this (off-boarding must bite at
#: once); Slack's `subteam_members_changed` / `subteam_updated` events drop the cache sooner.
CACHE_SECONDS = 60
EMPTY = "\x00"  # marks a cached empty group, so a failing lookup is not retried on every click


class SlackDirectory:
    def __init__(self, client: WebClient, redis: Redis) -> None:
        self.client = client
        self.r = redis

    def forget(self, group_id: str) -> None:
        """The group changed (a Slack event said so): the next lookup asks Slack again."""
        self.r.delete(keys.usergroup_members(group_id))

    def members(self, group_id: str) -> set[str]:
        key = keys.usergroup_members(group_id)
        cached = self.r.smembers(key)
        if cached:
            return {m for m in cached if m != EMPTY}
        try:
            resp = self.client.usergroups_users_list(usergroup=group_id)
            users = set(resp.get("users") or [])
        except SlackApiError as e:
            # plan_upgrade_required, no_such_subteam, ratelimited…: nobody counts via this group
            log.warning("usergroups.users.list %s failed: %s", group_id, e.response.get("error"))
            users = set()
        except Exception as e:  # noqa: BLE001 - Slack unreachable: refuse rather than fail open
            log.warning("usergroups.users.list %s unreachable: %s", group_id, type(e).__name__)
            return set()
        pipe = self.r.pipeline()
        pipe.delete(key)
        pipe.sadd(key, *(users or {EMPTY}))
        pipe.expire(key, CACHE_SECONDS if users else 30)
        pipe.execute()
        return users
