"""Releasing a Redis lock only while it is still the holder's.

Most locks are redis-py's `Lock` (token-checked release). The per-request Slack message lock is
also taken inside a Lua script (workers/jobs/notify/pacing.py picks the request to post and locks it in one
step), so it is released here with the same check: delete the key only if it still holds our
token. GET-then-DEL would delete a lock someone else took in between.
"""

from __future__ import annotations

from redis import Redis

# KEYS: lock   ARGV: token → 1 when released
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def release(redis: Redis, key: str, token: str) -> bool:
    """Delete `key` if it still holds `token`; True when it did."""
    return bool(redis.eval(_RELEASE, 1, key, token))
