"""Wires one process's parts together from Settings: Redis, store, audit, policy, Slack client."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from functools import cached_property

from redis import Redis
from slack_sdk import WebClient

from bot.store import keys
from bot.decision.service import AccessService
from bot.store.audit import AuditLog
from bot.core.errors import PolicyError
from bot.core.policy.load import Policy, load_policy
from bot.store.policy_versions import PolicyStore
from bot.core.crypto import AuditSigner, TokenSigner, Vault
from bot.store.requests import Store
from bot.settings import Settings

log = logging.getLogger("jit")


#: Connections one process may open. Past it a caller waits (up to POOL_WAIT seconds) for a free
#: one instead of failing: under gevent, thousands of greenlets may want Redis at once.
POOL_SIZE = 512
POOL_WAIT = 20


def redis_from_url(url: str, **kw) -> Redis:
    if url.startswith("redis+sentinel://"):
        from bot.store.sentinel import sentinel_master

        return sentinel_master(url, **kw)
    from redis import BlockingConnectionPool

    pool = BlockingConnectionPool.from_url(url, max_connections=POOL_SIZE, timeout=POOL_WAIT, **kw)
    return Redis(connection_pool=pool)


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
        """For RQ, which stores pickles (no decoding).

        No socket timeout of our own: RQ's worker blocks in its dequeue for up to
        `worker_ttl - 15` s (≈ 405 s) and sets the pool's timeout to that plus 10 s — but only
        for connections opened after it starts. A shorter timeout on connections opened before
        (the dispatcher's) made every idle stretch end in "Timeout reading from socket", which
        RQ takes for a lost connection and answers with sleeps of 1, 2, 4 … 60 s while due work
        waits (a revocation 33 s late after a few idle minutes). TCP keepalive and the health
        check still find connections whose peer vanished."""
        return redis_from_url(
            self.settings.redis_url, socket_timeout=None, socket_keepalive=True, health_check_interval=15
        )

    @cached_property
    def slack(self) -> WebClient:
        # retry_handlers=[]: slack_sdk's default ConnectionErrorRetryHandler re-sends a request
        # after a reset connection, chat.postMessage included, which Slack may already have
        # posted. Retries are decided in one place: the due queue (RetryLater, backoff), where
        # a post whose answer was lost is looked up before it is sent again.
        return WebClient(
            token=self.settings.slack_bot_token.get_secret_value(),
            base_url=self.settings.slack_api_url,
            timeout=10,
            retry_handlers=[],
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
        from workers.queue.scheduler import Dispatcher

        return Dispatcher(self.raw_redis)

    @cached_property
    def store(self) -> Store:
        return Store(self.redis, self.audit, self.settings.jit_request_retention, effects=self.dispatcher)

    @cached_property
    def audit(self) -> AuditLog:
        signer = AuditSigner(self.settings.jit_secret_key.get_secret_value(), self.settings.previous_secret_keys())
        return AuditLog(self.redis, signer=signer)

    @cached_property
    def directory(self):
        from bot.decision.slack.directory import SlackDirectory

        # Group lookups can happen while a click waits for its answer (cache cold): keep them
        # well inside Slack's 3 s; a failed lookup counts nobody in (fail closed).
        quick = WebClient(
            token=self.settings.slack_bot_token.get_secret_value(),
            base_url=self.settings.slack_api_url,
            timeout=2,
            retry_handlers=[],
        )
        return SlackDirectory(quick, self.redis)

    @cached_property
    def access(self) -> AccessService:
        return AccessService(
            self.store,
            self.audit,
            lambda: self.policy,
            self.directory,
            self.vault,
            policies=self.policy_store.get,
        )

    @cached_property
    def policy_store(self) -> PolicyStore:
        return PolicyStore(self.redis, self.settings.jit_request_retention)

    @cached_property
    def limiter(self):
        from bot.store.ratelimit import PipelineRateLimiter

        return PipelineRateLimiter(self.redis, self.settings.jit_rate_limit)

    # ---------------------------------------------------------------- policy

    @property
    def policy(self) -> Policy:
        if self._policy is None:
            with self._lock:
                if self._policy is None:
                    policy = load_policy(self.policy_file)
                    self._keep_version(policy)
                    self._policy = policy
        return self._policy

    @property
    def policy_file(self) -> str:
        return str(self.policy_path or self.settings.jit_policy_file)

    def set_policy(self, policy: Policy) -> Policy | None:
        """Put `policy` in force (a reload); returns the one it replaces."""
        self._keep_version(policy)
        with self._lock:
            previous, self._policy = self._policy, policy
        return previous

    def _keep_version(self, policy: Policy) -> None:
        """Store the version's text by sha, so requests created under it keep its rules."""
        try:
            self.policy_store.save(policy)
        except Exception as e:  # noqa: BLE001 - Redis down: the policy still loads; retried on reload
            log.warning("could not store policy %s: %s", policy.sha256[:12], type(e).__name__)

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

    def record_policy_loaded(self, trigger: str = "start") -> bool:
        """Audit the policy in force whenever it differs from the one recorded last, with a
        summary of what changed, and tell the audit channel. True when this call recorded it
        (one process does, however many load the same file)."""
        from bot.policy_reload import describe_changes, policy_diff

        policy = self.policy
        self._keep_version(policy)
        previous = self.redis.getset(keys.policy_current(), policy.sha256)
        if previous == policy.sha256:
            return False
        old = self.policy_store.get(previous) if previous else None
        diff = policy_diff(old, policy)
        self.audit.append(
            "policy.loaded",
            actor="jit",
            details={
                "sha256": policy.sha256,
                "source": policy.source,
                "previous_sha256": previous,
                "trigger": trigger,
                "changes": diff,
            },
        )
        self.post_audit_notice(describe_changes(policy, previous, diff, trigger))
        return True

    def post_audit_notice(self, text: str) -> None:
        """A line in the audit channel, owed through the due queue (retried until posted)."""
        from workers.jobs.notify.notices import queue_notice

        channel = self.policy.audit_channel()
        if not channel:
            return
        try:
            queue_notice(self, channel, text)
        except Exception as e:  # noqa: BLE001 - Redis away: the audit trail already has it
            log.warning("could not queue audit-channel notice: %s", type(e).__name__)

    def backend_for(self, action: str, policy_sha256: str | None = None):
        """The grant backend for `action` as configured in the policy version `policy_sha256`
        (the request's), or in the current policy when that version is unknown."""
        import os

        from workers.backends.base import BackendEnv, registry

        policy = self.policy
        if policy_sha256 and policy_sha256 != policy.sha256:
            policy = self.policy_store.get(policy_sha256) or policy
        gtype, cfg = policy.grants[action]
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
