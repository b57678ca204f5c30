"""Opening Redis: plain URLs (redis://, rediss://, unix://) and Sentinel (redis+sentinel://)."""

from __future__ import annotations

from redis import BlockingConnectionPool, Redis

from bot.store.sentinel import sentinel_master

#: Connections one process may open. Past it a caller waits (up to POOL_WAIT seconds) for a free
#: one instead of failing: under gevent, thousands of greenlets may want Redis at once.
POOL_SIZE = 512
POOL_WAIT = 20


def redis_from_url(url: str, **kw) -> Redis:
    if url.startswith("redis+sentinel://"):
        return sentinel_master(url, **kw)
    pool = BlockingConnectionPool.from_url(url, max_connections=POOL_SIZE, timeout=POOL_WAIT, **kw)
    return Redis(connection_pool=pool)
