"""`record`: a no-op credential that records when it was granted and revoked (benchmarks, tests).

Nothing is created anywhere; the backend writes the wall-clock time of each call into a Redis
hash named by its config (`key`), in the Redis named by the `redis_url_env` variable (default:
the bot's own `REDIS_URL`). Fields: `<request id>:grant` / `<request id>:revoke` hold the time
of the first call in ms, `<request id>:grants` / `<request id>:revokes` count the calls, so a
duplicate revoke shows up. Not meant for production policies: it issues nothing.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from pydantic import Field
from redis import Redis

from bot.core.clock import now_ms
from bot.store.connection import redis_from_url
from workers.backends.base import BackendConfig, GrantBackend, GrantError, GrantRequest, register

_clients: dict[str, Redis] = {}
_lock = threading.Lock()


class RecordConfig(BackendConfig):
    key: str = Field(min_length=1, max_length=200, description="Redis hash that receives the times")
    redis_url_env: str = Field("REDIS_URL", pattern=r"^[A-Z_][A-Z0-9_]*$")

    offered: ClassVar[bool] = False  # a benchmark's instrument, not a credential: never offered to users


def _client(url: str) -> Redis:
    # One connection pool per URL: the backend object is built afresh for every job, and a new
    # connection per revoke would add its set-up time to what is being measured.
    with _lock:
        client = _clients.get(url)
        if client is None:
            client = _clients[url] = redis_from_url(url, socket_timeout=10)
        return client


@register
class RecordBackend(GrantBackend):
    type = "record"
    Config = RecordConfig
    enforces_expiry = False

    def _record(self, request: GrantRequest, what: str) -> int:
        at_ms = now_ms()  # first thing: the moment the call happened
        url = self.env.environ.get(self.config.redis_url_env)
        if not url:
            raise GrantError(f"record backend: {self.config.redis_url_env} is not set")
        pipe = _client(url).pipeline(transaction=False)
        pipe.hsetnx(self.config.key, f"{request.id}:{what}", at_ms)
        pipe.hincrby(self.config.key, f"{request.id}:{what}s", 1)
        pipe.execute()
        return at_ms

    def grant(self, request: GrantRequest) -> dict[str, Any]:
        at_ms = self._record(request, "grant")
        return {"recorded_at_ms": at_ms, "expires_at": request.as_json()["expires_at"]}

    def revoke(self, request: GrantRequest, credential: dict[str, Any] | None) -> None:
        self._record(request, "revoke")
