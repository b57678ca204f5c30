"""One process's parts: Redis clients, the store and audit trail, the policy in force, the four
stage services and the Slack client — built lazily, each handed its dependencies.

What the process needs from workers/ (the RQ dispatcher, the grant backends) is handed in by
bot/wiring.py, so nothing here imports workers/ and jobs can be typed against `Runtime`.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pydantic import BaseModel
from redis import Redis
from slack_sdk import WebClient

from bot.core.crypto import AuditSigner, RequestTokens, TokenSigner, Vault
from bot.core.errors import PolicyError, PolicyFileMissing
from bot.core.policy.diff import policy_diff
from bot.core.policy.inflight import InFlightRules
from bot.core.policy.load import load_policy, parse_policy
from bot.core.policy.policy import Policy
from bot.core.ports import GrantBackend
from bot.decision.service import DecisionService
from bot.decision.slack.directory import SlackDirectory
from bot.decision.slack.oncall import Provider, SlackOnCall
from bot.decision.slack.views.policy_notices import describe_changes
from bot.grant.extend import ExtendService
from bot.grant.service import GrantService
from bot.grant.usage import UsageService
from bot.request.service import RequestService
from bot.revoke.service import RevokeService
from bot.revoke.session import SessionService
from bot.settings import Settings
from bot.store import keys
from bot.store.audit import AuditLog
from bot.store.connection import redis_from_url
from bot.store.home_viewers import HomeViewers
from bot.store.metrics import Metrics
from bot.store.notices import Notices
from bot.store.policy_versions import PolicyStore
from bot.store.ratelimit import PipelineRateLimiter
from bot.store.requests import Store
from bot.store.usage import UsageStore

log = logging.getLogger("jit")


@dataclass(frozen=True)
class Plugins:
    """What workers/ provides, handed in by bot/wiring.py."""

    #: Builds the object that hands due items to jobs (the RQ dispatcher) from the raw Redis.
    effects: Callable[[Redis], Any]
    #: Grant type name → backend class (with its `Config` schema).
    backends: Callable[[], Mapping[str, Any]]
    #: Builds a backend from its class, validated config and environment.
    make_backend: Callable[[Any, Any, Runtime], GrantBackend]

    def grant_types(self) -> dict[str, type[BaseModel]]:
        return {name: cls.Config for name, cls in self.backends().items()}


@dataclass
class Runtime:
    settings: Settings
    plugins: Plugins
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
        waits. TCP keepalive and the health check still find connections whose peer vanished."""
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

    # ---------------------------------------------------------------- adapters

    @cached_property
    def vault(self) -> Vault:
        return Vault(self.settings.jit_secret_key.get_secret_value(), self.settings.previous_secret_keys())

    @cached_property
    def request_tokens(self) -> RequestTokens:
        return RequestTokens(self.settings.jit_secret_key.get_secret_value(), self.settings.previous_secret_keys())

    @cached_property
    def signer(self) -> TokenSigner:
        return TokenSigner(
            self.settings.jit_secret_key.get_secret_value(),
            self.settings.previous_secret_keys(),
            issuer=self.settings.jit_public_url,
        )

    @cached_property
    def dispatcher(self) -> Any:
        """Hands due items to jobs at once (the store's Effects); asks for Home tabs to be published."""
        return self.plugins.effects(self.raw_redis)

    @property
    def effects(self) -> Any:
        return self.dispatcher

    @cached_property
    def audit(self) -> AuditLog:
        signer = AuditSigner(self.settings.jit_secret_key.get_secret_value(), self.settings.previous_secret_keys())
        return AuditLog(self.redis, signer=signer)

    @cached_property
    def store(self) -> Store:
        return Store(self.redis, self.audit, self.settings.jit_request_retention, effects=self.dispatcher)

    @cached_property
    def metrics(self) -> Metrics:
        return Metrics(self.redis)

    @cached_property
    def notices(self) -> Notices:
        return Notices(self.redis, self.dispatcher)

    @cached_property
    def home_viewers(self) -> HomeViewers:
        return HomeViewers(self.redis)

    @cached_property
    def directory(self) -> SlackDirectory:
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
    def oncall(self) -> SlackOnCall:
        """Who is on call for the policy's `oncall:` schedules (PagerDuty, Opsgenie), as Slack users."""
        s = self.settings
        return SlackOnCall(
            self.directory.client,
            self.redis,
            Provider(s.pagerduty_api_url, s.pagerduty_token.get_secret_value() if s.pagerduty_token else None),
            Provider(s.opsgenie_api_url, s.opsgenie_api_key.get_secret_value() if s.opsgenie_api_key else None),
            cache_seconds=s.jit_oncall_cache_seconds,
        )

    @cached_property
    def policy_store(self) -> PolicyStore:
        return PolicyStore(self.redis, self.settings.jit_request_retention, self.parse_policy)

    @cached_property
    def limiter(self) -> PipelineRateLimiter:
        return PipelineRateLimiter(self.redis, self.settings.jit_rate_limit)

    def queue_depths(self) -> dict[str, tuple[int, int]]:
        """Jobs waiting and failed per job queue (for /metrics)."""
        return {name: (q.count, q.failed_job_registry.count) for name, q in self.dispatcher.queues.items()}

    # ---------------------------------------------------------------- the stages

    @cached_property
    def rules(self) -> InFlightRules:
        return InFlightRules(lambda: self.policy, self.policy_store.get, self.directory, self.oncall)

    @cached_property
    def requests(self) -> RequestService:
        return RequestService(self.store, self.audit, self.rules, self.request_tokens, self.vault, self.metrics)

    @cached_property
    def decisions(self) -> DecisionService:
        return DecisionService(self.store, self.audit, self.rules, self.metrics)

    @cached_property
    def grants(self) -> GrantService:
        return GrantService(self.store, self.audit, self.rules, self.vault, self.metrics)

    @cached_property
    def extensions(self) -> ExtendService:
        return ExtendService(self.store, self.audit, self.rules, self.decisions, self.vault)

    @cached_property
    def revokes(self) -> RevokeService:
        return RevokeService(self.store, self.audit, self.decisions, self.vault, self.metrics, usage=self.usage)

    @cached_property
    def usage(self) -> UsageService:
        """What the targets saw of each grant's use (token checks, sessions at revoke)."""
        store = UsageStore(self.redis, self.settings.jit_request_retention)
        return UsageService(store, self.audit, self.vault, self.settings.jit_usage_update_ms)

    @cached_property
    def sessions(self) -> SessionService:
        return SessionService(self.store, self.audit, self.vault, self.settings.jit_session_transcript_max_bytes)

    # ---------------------------------------------------------------- policy

    def parse_policy(self, text: str, source: str = "<policy>") -> Policy:
        return parse_policy(text, source, grant_types=self.plugins.grant_types())

    @property
    def policy(self) -> Policy:
        if self._policy is None:
            with self._lock:
                if self._policy is None:
                    policy = load_policy(self.policy_file, grant_types=self.plugins.grant_types())
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

    def load_policy_or_exit(self, keep: bool = True) -> Policy:
        """At start-up: a bad policy stops the process with one line per problem. `keep=False`
        only reads the file: nothing is stored in Redis (which may not answer yet), nothing put in force."""
        try:
            policy = self.policy if keep else load_policy(self.policy_file, grant_types=self.plugins.grant_types())
        except PolicyFileMissing as e:  # the path came from the settings
            print(f"jit: {e.errors[0]}: set JIT_POLICY_FILE to your policy's path", file=sys.stderr)
            raise SystemExit(2) from None
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
        channel = self.policy.audit_channel()
        if not channel:
            return
        try:
            self.notices.queue(channel, text)
        except Exception as e:  # noqa: BLE001 - Redis away: the audit trail already has it
            log.warning("could not queue audit-channel notice: %s", type(e).__name__)

    def backend_for(self, action: str, policy_sha256: str | None = None) -> GrantBackend:
        """The grant backend for `action` as configured in the policy version `policy_sha256`
        (the request's), or in the current policy when that version is unknown."""
        policy = self.policy
        if policy_sha256 and policy_sha256 != policy.sha256:
            policy = self.policy_store.get(policy_sha256) or policy
        gtype, cfg = policy.grants[action]
        return self.plugins.make_backend(self.plugins.backends()[gtype], cfg, self)


def environ() -> dict[str, str]:
    """The process environment a backend may read (exec's passthrough, DSN variables)."""
    return dict(os.environ)
