"""Wires one process's parts together from Settings: Redis, store, audit, policy, Slack client."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from functools import cached_property

from redis import Redis
from slack_sdk import WebClient

from bot.domain import keys
from bot.domain.access import AccessService
from bot.domain.audit import AuditLog
from bot.domain.errors import PolicyError
from bot.domain.policy import Policy, load_policy
from bot.domain.secrets import TokenSigner, Vault
from bot.domain.store import Store
from bot.settings import Settings

log = logging.getLogger("jit")


def redis_from_url(url: str, **kw) -> Redis:
    if url.startswith("redis+sentinel://"):
        from bot.sentinel import sentinel_master

        return sentinel_master(url, **kw)
    return Redis.from_url(url, **kw)


@dataclass
class Runtime:
    settings: Settings
    policy_path: str | None = None
    _policy: Policy | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # ---------------------------------------------------------------- connections

    @cached_property
    def redis(self) -> Redis:
        return redis_from_url(
            self.settings.redis_url, decode_responses=True, socket_timeout=10, health_check_interval=15
        )

    @cached_property
    def raw_redis(self) -> Redis:
        """For RQ, which stores pickles (no decoding)."""
        return redis_from_url(self.settings.redis_url, socket_timeout=30, health_check_interval=15)

    @cached_property
    def slack(self) -> WebClient:
        return WebClient(
            token=self.settings.slack_bot_token.get_secret_value(),
            base_url=self.settings.slack_api_url,
            timeout=10,
        )

    # ---------------------------------------------------------------- domain

    @cached_property
    def vault(self) -> Vault:
        return Vault(self.settings.jit_secret_key.get_secret_value(), self.settings.previous_secret_keys())

    @cached_property
    def signer(self) -> TokenSigner:
        return TokenSigner(
            self.settings.jit_secret_key.get_secret_value(),
            self.settings.previous_secret_keys(),
            issuer=self.settings.jit_public_url,
        )

    @cached_property
    def dispatcher(self):
        from workers.expiry import Dispatcher

        return Dispatcher(self.raw_redis)

    @cached_property
    def store(self) -> Store:
        return Store(self.redis, self.settings.jit_request_retention, effects=self.dispatcher)

    @cached_property
    def audit(self) -> AuditLog:
        return AuditLog(self.redis)

    @cached_property
    def directory(self):
        from bot.slack.directory import SlackDirectory

        return SlackDirectory(self.slack, self.redis)

    @cached_property
    def access(self) -> AccessService:
        return AccessService(self.store, self.audit, lambda: self.policy, self.directory, self.vault)

    @cached_property
    def limiter(self):
        from bot.hook.ratelimit import PipelineRateLimiter

        return PipelineRateLimiter(self.redis, self.settings.jit_rate_limit)

    # ---------------------------------------------------------------- policy

    @property
    def policy(self) -> Policy:
        if self._policy is None:
            with self._lock:
                if self._policy is None:
                    self._policy = load_policy(self.policy_path or self.settings.jit_policy_file)
        return self._policy

    def load_policy_or_exit(self) -> Policy:
        """At start-up: a bad policy stops the process with one line per problem."""
        import sys

        try:
            policy = self.policy
        except PolicyError as e:
            print(f"jit: invalid policy: {e.errors[0]}", file=sys.stderr)
            for extra in e.errors[1:]:
                print(f"  {extra}", file=sys.stderr)
            raise SystemExit(2) from None
        return policy

    def record_policy_loaded(self) -> None:
        """Audit the policy in force whenever it differs from the one recorded last."""
        policy = self.policy
        previous = self.redis.getset(keys.policy_current(), policy.sha256)
        if previous != policy.sha256:
            self.audit.append(
                "policy.loaded",
                actor="jit",
                details={"sha256": policy.sha256, "source": policy.source, "previous_sha256": previous},
            )

    def backend_for(self, action: str):
        import os

        from workers.backends.base import BackendEnv, registry

        gtype, cfg = self.policy.grants[action]
        env = BackendEnv(environ=dict(os.environ), exec_timeout=self.settings.jit_exec_timeout, token_signer=self.signer)
        return registry()[gtype](cfg, env)


_current: Runtime | None = None


def current() -> Runtime:
    """The process's runtime (built from the environment on first use)."""
    global _current
    if _current is None:
        from bot.settings import load_settings

        _current = Runtime(load_settings())
    return _current


def install(rt: Runtime | None) -> None:
    global _current
    _current = rt
