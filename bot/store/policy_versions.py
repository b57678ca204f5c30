"""Every policy version by its SHA-256 in Redis, so a request keeps the rules it was created under."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

from redis import Redis

from bot.core.clock import now_ms
from bot.core.errors import PolicyError
from bot.core.policy.policy import Policy
from bot.store import keys

#: Parses a policy's text (the caller knows the grant types): (text, source) → Policy.
Parse = Callable[[str, str], Policy]

log = logging.getLogger("jit.policy")

#: Parsed versions kept in memory per process (they are immutable, so caching is safe).
CACHE_SIZE = 16


class PolicyStore:
    def __init__(self, redis: Redis, retention_s: int, parse: Parse) -> None:
        self.r = redis
        self.parse = parse
        self.ttl_s = retention_s + 2 * 86400
        self._cache: OrderedDict[str, Policy] = OrderedDict()
        self._lock = threading.Lock()

    def save(self, policy: Policy) -> None:
        """Keep this version's text (idempotent; renews its TTL)."""
        key = keys.policy_version(policy.sha256)
        pipe = self.r.pipeline(transaction=True)
        pipe.hsetnx(key, "stored_ms", now_ms())
        pipe.hset(key, mapping={"text": policy.text, "source": policy.source})
        pipe.expire(key, self.ttl_s)
        pipe.execute()
        self._remember(policy)

    def get(self, sha256: str) -> Policy | None:
        """The version with this hash, or None when it was never stored (or expired)."""
        if not sha256:
            return None
        with self._lock:
            cached = self._cache.get(sha256)
            if cached is not None:
                self._cache.move_to_end(sha256)
                return cached
        h = self.r.hgetall(keys.policy_version(sha256))
        if not h or "text" not in h:
            return None
        try:
            policy = self.parse(h["text"], h.get("source") or f"policy {sha256[:12]}")
        except PolicyError as e:  # valid when stored; a newer jit may read it differently
            log.error("stored policy %s no longer parses: %s", sha256[:12], e.errors[0])
            return None
        if policy.sha256 != sha256:
            log.error("stored policy %s does not match its hash", sha256[:12])
            return None
        self._remember(policy)
        return policy

    def _remember(self, policy: Policy) -> None:
        with self._lock:
            self._cache[policy.sha256] = policy
            self._cache.move_to_end(policy.sha256)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
