"""Who has App Home open: the viewers whose Home is re-published when a request changes."""

from __future__ import annotations

from redis import Redis

from bot.core.clock import now_ms
from bot.store import keys

VIEWER_TTL_MS = 3600_000  # Home is re-published for people who opened it within the hour
MAX_VIEWERS = 50


class HomeViewers:
    def __init__(self, redis: Redis) -> None:
        self.r = redis

    def remember(self, user: str) -> None:
        t = now_ms()
        key = keys.home_viewers()
        pipe = self.r.pipeline()
        pipe.zadd(key, {user: t})
        pipe.zremrangebyscore(key, "-inf", t - VIEWER_TTL_MS)
        pipe.zremrangebyrank(key, 0, -MAX_VIEWERS - 1)
        pipe.pexpire(key, VIEWER_TTL_MS)
        pipe.execute()

    def recent(self) -> list[str]:
        return self.r.zrangebyscore(keys.home_viewers(), now_ms() - VIEWER_TTL_MS, "+inf")
