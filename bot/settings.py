"""The one Settings class: every setting jit reads, from the environment or `.env`."""

from __future__ import annotations

import sys
from datetime import timedelta
from functools import lru_cache

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bot.core.audit_sinks import FileSink, HttpSink, SyslogSink, parse_sinks
from bot.core.clock import parse_duration
from bot.core.net import check_url
from bot.platforms.github import read_private_key
from bot.store.sentinel import parse as parse_sentinel_url


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False)

    redis_url: str = Field("redis://localhost:6379/0", alias="REDIS_URL")
    slack_bot_token: SecretStr = Field(alias="SLACK_BOT_TOKEN")
    slack_signing_secret: SecretStr = Field(alias="SLACK_SIGNING_SECRET")
    slack_api_url: str = Field("https://slack.com/api/", alias="SLACK_API_URL")
    #: App-level token (xapp-…): when set, Slack traffic arrives over Socket Mode as well
    #: (each `jit serve` worker process holds one socket); /slack/events keeps working.
    slack_app_token: SecretStr | None = Field(None, alias="SLACK_APP_TOKEN")
    #: Slack posts to one channel are spaced by this many ms (Slack allows ~1 message/s).
    jit_slack_post_interval_ms: int = Field(1000, alias="JIT_SLACK_POST_INTERVAL_MS", ge=0)
    #: More new requests than this waiting for one channel: post a digest listing them first.
    jit_slack_digest_after: int = Field(5, alias="JIT_SLACK_DIGEST_AFTER", ge=1)
    #: Message updates after expiries are spaced by this many ms across the workspace (chat.update
    #: is Slack's Tier 3, about 50 a minute; 1500 leaves room for the updates clicks make).
    jit_slack_update_interval_ms: int = Field(1500, alias="JIT_SLACK_UPDATE_INTERVAL_MS", ge=0)
    #: When set, clicks and commands from any other workspace are refused.
    slack_team_id: str | None = Field(None, alias="SLACK_TEAM_ID")
    jit_policy_file: str = Field("jit-policy.yaml", alias="JIT_POLICY_FILE")
    jit_secret_key: SecretStr = Field(alias="JIT_SECRET_KEY")
    #: Earlier secret keys, comma-separated: still decrypt stored credentials and stay
    #: published in the JWKS until the tokens they signed have expired (key rotation).
    jit_previous_secret_keys: SecretStr = Field(SecretStr(""), alias="JIT_PREVIOUS_SECRET_KEYS")
    jit_public_url: str = Field("http://localhost:3000", alias="JIT_PUBLIC_URL")
    #: Credentials of the resource servers that call /v1/introspect, comma-separated
    #: `AUDIENCE=TOKEN` entries: each token may ask only about tokens issued for its audience(s);
    #: `*=TOKEN` about any. A bare token is a start-up error.
    jit_introspection_tokens: SecretStr = Field(SecretStr(""), alias="JIT_INTROSPECTION_TOKENS")
    jit_exec_timeout: float = Field(30.0, alias="JIT_EXEC_TIMEOUT", gt=0)
    jit_grant_max_attempts: int = Field(5, alias="JIT_GRANT_MAX_ATTEMPTS", ge=1)
    jit_revoke_alert_after: int = Field(3, alias="JIT_REVOKE_ALERT_AFTER", ge=1)
    #: How long finished requests stay readable (status, audit context) before Redis drops them.
    jit_request_retention: int = Field(30 * 86400, alias="JIT_REQUEST_RETENTION", gt=0)
    #: The most of a `jit run` transcript the server keeps (UTF-8 bytes, its tail; at most 1 MiB):
    #: `POST /v1/requests/{id}/session` refuses a longer one with 413.
    jit_session_transcript_max_bytes: int = Field(
        1024 * 1024, alias="JIT_SESSION_TRANSCRIPT_MAX_BYTES", ge=0, le=1024 * 1024
    )
    #: Request creations allowed per pipeline per minute (0 = unlimited); over it: 429.
    jit_rate_limit: int = Field(120, alias="JIT_RATE_LIMIT", ge=0)
    #: Long-polls (`GET /v1/requests/{id}?wait=N`) one pipeline may hold open at once, counted
    #: across every server process (0 = unlimited); over it: 429 + Retry-After.
    jit_max_long_polls_per_pipeline: int = Field(200, alias="JIT_MAX_LONG_POLLS_PER_PIPELINE", ge=0)
    #: Hook requests one `jit serve` worker process works on at once (0 = unbounded); over it the
    #: hook answers 503 + Retry-After at once instead of making every request slower (long-polls
    #: are not counted: see JIT_MAX_LONG_POLLS_PER_PIPELINE).
    jit_hook_max_in_flight: int = Field(16, alias="JIT_HOOK_MAX_IN_FLIGHT", ge=0)
    #: While hook requests that share a process take longer than this (ms), its in-flight bound
    #: above shrinks (down to 2), and it grows back as they answer within it: refusing sooner
    #: instead of answering everyone late (0 = the bound stays fixed). See
    #: bot/request/http/admission.py.
    jit_hook_latency_budget_ms: int = Field(20, alias="JIT_HOOK_LATENCY_BUDGET_MS", ge=0, le=60_000)
    #: A request body (hook, Slack, webhooks) must arrive within this many seconds of its headers;
    #: else 408 and the connection is closed: a sender trickling its body holds no connection and
    #: no place in the in-flight bound for longer.
    jit_http_body_timeout_s: float = Field(10.0, alias="JIT_HTTP_BODY_TIMEOUT_S", gt=0, le=300)
    jit_log_level: str = Field("INFO", alias="JIT_LOG_LEVEL")
    #: Bearer token a scraper sends to /metrics (≥ 16 chars); unset: /metrics answers loopback only.
    jit_metrics_token: SecretStr | None = Field(None, alias="JIT_METRICS_TOKEN")
    #: gunicorn (gevent) workers of `jit serve`, and RQ worker processes of `jit worker`
    #: (each command's --workers / --concurrency overrides its setting).
    jit_web_workers: int = Field(2, alias="JIT_WEB_WORKERS", ge=1)
    jit_worker_concurrency: int = Field(2, alias="JIT_WORKER_CONCURRENCY", ge=1)
    #: Deployment gates (docs/gates.md). GitHub: jit is a GitHub App acting as a custom deployment
    #: protection rule — its app id, its private key (the downloaded PEM file), its webhook secret,
    #: and the API's base URL (GitHub Enterprise Server: https://HOST/api/v3).
    github_app_id: str | None = Field(None, alias="GITHUB_APP_ID")
    github_app_private_key_file: str | None = Field(None, alias="GITHUB_APP_PRIVATE_KEY_FILE")
    github_api_url: str = Field("https://api.github.com", alias="GITHUB_API_URL")
    github_webhook_secret: SecretStr | None = Field(None, alias="GITHUB_WEBHOOK_SECRET", validate_default=True)
    #: GitLab: the instance's URL, the deployment webhook's secret token (X-Gitlab-Token) and the
    #: API token of a user allowed to approve deployments to the gated environments.
    gitlab_url: str | None = Field(None, alias="GITLAB_URL")
    gitlab_webhook_token: SecretStr | None = Field(None, alias="GITLAB_WEBHOOK_TOKEN")
    gitlab_api_token: SecretStr | None = Field(None, alias="GITLAB_API_TOKEN", validate_default=True)
    #: On-call approvers (policy `oncall:` entries): a PagerDuty REST API key (read-only is
    #: enough) and an Opsgenie API integration key; without one, that provider's schedules count
    #: nobody. The base URLs point elsewhere for the EU instances or a test server.
    pagerduty_token: SecretStr | None = Field(None, alias="PAGERDUTY_TOKEN")
    pagerduty_api_url: str = Field("https://api.pagerduty.com", alias="PAGERDUTY_API_URL")
    opsgenie_api_key: SecretStr | None = Field(None, alias="OPSGENIE_API_KEY")
    opsgenie_api_url: str = Field("https://api.opsgenie.com", alias="OPSGENIE_API_URL")
    #: How long who-is-on-call is cached (s): a hand-over takes effect at most this late.
    jit_oncall_cache_seconds: int = Field(30, alias="JIT_ONCALL_CACHE_SECONDS", ge=0, le=600)
    #: How long before an active grant ends its thread hears "expires in 5 min" (with Extend and
    #: Release buttons): `90s`, `5m`, `1h` or seconds. Only grants whose window is longer than
    #: 10 minutes (and than this) are warned.
    jit_warn_before: timedelta = Field(timedelta(minutes=5), alias="JIT_WARN_BEFORE")

    @field_validator("jit_warn_before", mode="before")
    @classmethod
    def _warn_before(cls, v: object) -> object:
        if isinstance(v, str) and v.strip().isdigit():
            v = int(v.strip())
        return v if isinstance(v, timedelta) else parse_duration(v)

    #: A request's message shows its token's /v1/introspect checks, updated at most this often (ms).
    jit_usage_update_ms: int = Field(30_000, alias="JIT_USAGE_UPDATE_MS", ge=1000)

    @field_validator("pagerduty_api_url", "opsgenie_api_url")
    @classmethod
    def _oncall_url(cls, v: str) -> str:
        # the provider's key goes there: https, or plain http to this machine only (a test server)
        return check_url(v, "the URL").rstrip("/")

    @field_validator("pagerduty_token", "opsgenie_api_key")
    @classmethod
    def _blank_is_unset(cls, v: SecretStr | None) -> SecretStr | None:
        return v if v is not None and v.get_secret_value().strip() else None

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, v: str) -> str:
        if not v.startswith(("redis://", "rediss://", "unix://", "redis+sentinel://")):
            raise ValueError("must start with redis://, rediss://, unix:// or redis+sentinel://")
        if v.startswith("redis+sentinel://"):
            parse_sentinel_url(v)  # a malformed Sentinel URL is a one-line start-up error, not a traceback
        return v

    @field_validator("slack_api_url", "jit_public_url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return v

    @field_validator("jit_secret_key")
    @classmethod
    def _strong_key(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        return v

    @field_validator("slack_app_token")
    @classmethod
    def _app_token(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value().strip():
            return None
        if not v.get_secret_value().startswith("xapp-"):
            raise ValueError("must be an app-level token starting with xapp-")
        return v

    @field_validator("jit_introspection_tokens")
    @classmethod
    def _audience_tokens(cls, v: SecretStr) -> SecretStr:
        _introspection_entries(v.get_secret_value())  # one line naming the setting, never the token
        return v

    @field_validator("jit_metrics_token")
    @classmethod
    def _metrics_token(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value().strip():
            return None
        if len(v.get_secret_value().strip()) < MIN_INTROSPECTION_TOKEN:
            raise ValueError(f"must be at least {MIN_INTROSPECTION_TOKEN} characters (e.g. `openssl rand -hex 32`)")
        return v

    @field_validator("slack_bot_token", "slack_signing_secret")
    @classmethod
    def _not_blank(cls, v: SecretStr) -> SecretStr:
        if not v.get_secret_value().strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("github_api_url", "gitlab_url")
    @classmethod
    def _platform_url(cls, v: str | None) -> str | None:
        return None if v is None or not v.strip() else check_url(v.strip().rstrip("/"), "the URL")

    @field_validator("github_app_id")
    @classmethod
    def _app_id(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        if not v.strip().isdigit():
            raise ValueError("must be the GitHub App's numeric id")
        return v.strip()

    @field_validator("gitlab_webhook_token")
    @classmethod
    def _blank_secret(cls, v: SecretStr | None) -> SecretStr | None:
        return v if v is not None and v.get_secret_value().strip() else None

    @field_validator("github_app_private_key_file")
    @classmethod
    def _app_key(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        read_private_key(v)  # unreadable, or not an RSA key: one line at start-up
        return v

    @field_validator("github_webhook_secret")
    @classmethod
    def _github_app(cls, v: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        """The GitHub App's settings go together: all three, or none."""
        secret = v if v is not None and v.get_secret_value().strip() else None
        given = [info.data.get("github_app_id"), info.data.get("github_app_private_key_file"), secret]
        if any(given) and not all(given):
            raise ValueError(
                "GITHUB_APP_ID, GITHUB_APP_PRIVATE_KEY_FILE and GITHUB_WEBHOOK_SECRET go together: set all three"
            )
        return secret

    @field_validator("gitlab_api_token")
    @classmethod
    def _gitlab(cls, v: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        """GitLab's settings go together: all three, or none."""
        token = v if v is not None and v.get_secret_value().strip() else None
        given = [info.data.get("gitlab_url"), info.data.get("gitlab_webhook_token"), token]
        if any(given) and not all(given):
            raise ValueError("GITLAB_URL, GITLAB_WEBHOOK_TOKEN and GITLAB_API_TOKEN go together: set all three")
        return token

    def previous_secret_keys(self) -> list[str]:
        raw = self.jit_previous_secret_keys.get_secret_value()
        return [k.strip() for k in raw.split(",") if k.strip()]

    def introspection_credentials(self) -> list[tuple[str, str]]:
        """(audience, token) pairs from JIT_INTROSPECTION_TOKENS; audience `*` means any."""
        return _introspection_entries(self.jit_introspection_tokens.get_secret_value())

    # ---------------------------------------------------------------- audit sinks (appended)

    #: Where the audit trail streams to: a JSON list of sinks (bot/core/audit_sinks.py, docs/audit.md).
    #: Secret as a whole: it holds HMAC keys and HEC tokens.
    jit_audit_sinks: SecretStr = Field(SecretStr(""), alias="JIT_AUDIT_SINKS")
    #: Hard cap on entries the audit stream keeps in Redis: past it the oldest are trimmed even if a
    #: sink has not acknowledged them (alerted in the audit channel and recorded in the trail).
    jit_audit_max_entries: int = Field(1_000_000, alias="JIT_AUDIT_MAX_ENTRIES", ge=100)

    @field_validator("jit_audit_sinks")
    @classmethod
    def _audit_sinks(cls, v: SecretStr) -> SecretStr:
        parse_sinks(v.get_secret_value())  # one line naming the sink and field, never a secret
        return v

    def audit_sinks(self) -> list[HttpSink | SyslogSink | FileSink]:
        return parse_sinks(self.jit_audit_sinks.get_secret_value())


#: An introspection token shorter than this is a mistake (e.g. a bare base64 token read as AUD=…).
MIN_INTROSPECTION_TOKEN = 16


def _introspection_entries(raw: str) -> list[tuple[str, str]]:
    entries = []
    for entry in raw.split(","):
        if not entry.strip():
            continue
        audience, sep, token = entry.partition("=")
        audience, token = audience.strip(), token.strip()
        if not sep or not audience or len(token) < MIN_INTROSPECTION_TOKEN:
            raise ValueError(
                "each comma-separated entry must be AUDIENCE=TOKEN (*=TOKEN for every audience), "
                f"with a token of at least {MIN_INTROSPECTION_TOKEN} characters"
            )
        entries.append((audience, token))
    return entries


class SettingsError(SystemExit):
    """Start-up stops with one line per bad setting, each naming the variable; no traceback."""


#: How to fix a setting that is missing, by variable: the line that reports it says so.
HOW_TO_SET = {
    "SLACK_BOT_TOKEN": "the Bot User OAuth Token (xoxb-…) from your Slack app's OAuth & Permissions page",
    "SLACK_SIGNING_SECRET": "the Signing Secret from your Slack app's Basic Information page",
    "JIT_SECRET_KEY": "at least 32 random characters: `openssl rand -hex 32` (`jit init` writes one into .env)",
}


def describe(error: ValidationError) -> list[str]:
    """One line per bad setting, each naming the variable and what to do about it: every problem at
    once, not one per start."""
    lines: list[str] = []
    for err in error.errors():
        name = str(err["loc"][0]).upper() if err["loc"] else "settings"
        if err["type"] == "missing":
            hint = HOW_TO_SET.get(name, "set it in the environment or in .env")
            lines.append(f"jit: setting {name} is required but not set: {hint}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if msg == "must not be empty" and name in HOW_TO_SET:
                msg += f": {HOW_TO_SET[name]}"
            lines.append(f"jit: setting {name} is invalid: {msg}")
    return lines


def load_settings(**overrides: object) -> Settings:
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as e:
        for line in describe(e):
            print(line, file=sys.stderr)
        raise SettingsError(2) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
