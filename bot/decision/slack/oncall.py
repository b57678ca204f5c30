"""Who is on call, as Slack users: PagerDuty (`GET /oncalls`) and Opsgenie
(`GET /v2/schedules/{id}/on-calls`) read through their REST APIs, people matched to Slack by email
(`users.lookupByEmail`), each cached briefly in Redis (bot/store/keys.py).

Fails closed: a provider that cannot be read (no key, unreachable, an error, an answer that does
not parse, or slower than the lookup's budget) counts nobody, and the answer says why; a person
whose email Slack does not know is simply not counted.

Bounded: a click waits for this, and Slack gives a click 3 s. One schedule's lookup (all its pages
and its people's Slack look-ups) has a budget of its own, enforced on the whole exchange (a
provider that drips its answer byte by byte is cut off too), and answers are capped in size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import requests
from redis import Redis
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.core.policy.oncall import OnCallAnswer
from bot.core.policy.schema import OnCallSchedule
from bot.store import keys

log = logging.getLogger("jit.oncall")

#: A provider that failed is asked again after this long at the earliest (not on every click).
ERROR_CACHE_SECONDS = 5
EMAIL_CACHE_SECONDS = 3600
NO_USER_CACHE_SECONDS = 300
#: PagerDuty pages of on-calls read at most (100 each).
MAX_PAGES = 10
#: Seconds one schedule's lookup may take in all (a click waits for it; Slack allows 3 s).
LOOKUP_BUDGET = 1.5
#: The most a provider's answer may weigh.
MAX_ANSWER_BYTES = 2 * 1024 * 1024
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.I)


class ProviderError(Exception):
    """The provider could not say who is on call (the message is safe to show)."""


@dataclass(frozen=True)
class Provider:
    """One provider's base URL and key (None: not configured)."""

    url: str
    key: str | None


def pagerduty_emails(pd: Provider, schedule: str, max_level: int, deadline: float) -> set[str]:
    """Emails of the people on call now for `schedule` at escalation levels 1…max_level."""
    if not pd.key:
        raise ProviderError("PAGERDUTY_TOKEN is not set")
    emails: set[str] = set()
    offset = 0
    for _ in range(MAX_PAGES):
        body = _get(
            "PagerDuty",
            f"{pd.url}/oncalls",
            {
                "schedule_ids[]": schedule,
                "include[]": "users",
                "time_zone": "UTC",
                "limit": 100,
                "offset": offset,
            },
            {"Authorization": f"Token token={pd.key}", "Accept": "application/vnd.pagerduty+json;version=2"},
            deadline,
        )
        oncalls = body.get("oncalls")
        if not isinstance(oncalls, list):
            raise ProviderError("PagerDuty answered without `oncalls`")
        for oc in oncalls:
            if not isinstance(oc, dict) or (oc.get("schedule") or {}).get("id") != schedule:
                continue
            level, email = oc.get("escalation_level"), (oc.get("user") or {}).get("email")
            if isinstance(level, int) and level <= max_level and isinstance(email, str) and email:
                emails.add(email)
        if not body.get("more"):
            return emails
        offset += len(oncalls)
    raise ProviderError(f"PagerDuty listed more than {MAX_PAGES * 100} on-calls")


def opsgenie_emails(og: Provider, schedule: str, deadline: float) -> set[str]:
    """Emails (Opsgenie usernames) of the people on call now for `schedule` (an id or a name)."""
    if not og.key:
        raise ProviderError("OPSGENIE_API_KEY is not set")
    body = _get(
        "Opsgenie",
        f"{og.url}/v2/schedules/{quote(schedule, safe='')}/on-calls",
        {"scheduleIdentifierType": "id" if _UUID.match(schedule) else "name", "flat": "true"},
        {"Authorization": f"GenieKey {og.key}"},
        deadline,
    )
    recipients = (body.get("data") or {}).get("onCallRecipients")
    if not isinstance(recipients, list):
        raise ProviderError("Opsgenie answered without `onCallRecipients`")
    return {r for r in recipients if isinstance(r, str) and r}


def _get(name: str, url: str, params: dict[str, Any], headers: dict[str, str], deadline: float) -> dict:
    """GET within `deadline` (time.monotonic()): the whole exchange, not each socket read."""

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise ProviderError(f"{name} did not answer within {LOOKUP_BUDGET:g} s")
        return remaining

    try:
        with requests.get(
            url, params=params, headers=headers, timeout=left(), allow_redirects=False, stream=True
        ) as resp:
            if resp.status_code != 200:
                raise ProviderError(f"{name} answered HTTP {resp.status_code}")
            raw = bytearray()
            for chunk in resp.iter_content(16 * 1024):
                raw += chunk
                left()
                if len(raw) > MAX_ANSWER_BYTES:
                    raise ProviderError(f"{name} answered more than {MAX_ANSWER_BYTES // 1024} KiB")
    except requests.RequestException as e:
        if isinstance(e, requests.Timeout):
            raise ProviderError(f"{name} did not answer within {LOOKUP_BUDGET:g} s") from None
        raise ProviderError(f"{name} is unreachable ({type(e).__name__})") from None
    try:
        body = json.loads(raw)
    except ValueError:
        raise ProviderError(f"{name} answered something that is not JSON") from None
    if not isinstance(body, dict):
        raise ProviderError(f"{name} answered something unexpected")
    return body


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class SlackOnCall:
    """The OnCallDirectory port (bot/core/policy/oncall.py) for PagerDuty and Opsgenie."""

    def __init__(
        self,
        client: WebClient,
        redis: Redis,
        pagerduty: Provider,
        opsgenie: Provider,
        cache_seconds: int = 30,
        budget: float = LOOKUP_BUDGET,
    ) -> None:
        self.client = client
        self.r = redis
        self.pagerduty = pagerduty
        self.opsgenie = opsgenie
        self.cache_seconds = cache_seconds
        self.budget = budget

    def on_call(self, schedule: OnCallSchedule) -> OnCallAnswer:
        key = keys.oncall_cache(_digest(schedule.key))
        cached = self.r.get(key) if self.cache_seconds else None
        if cached:
            data = json.loads(cached)
            return OnCallAnswer(frozenset(data.get("users", ())), data.get("error"))
        deadline = time.monotonic() + self.budget
        try:
            if schedule.pagerduty is not None:
                emails = pagerduty_emails(self.pagerduty, schedule.schedule, schedule.max_level, deadline)
            else:
                emails = opsgenie_emails(self.opsgenie, schedule.schedule, deadline)
            answer = OnCallAnswer(frozenset(u for e in sorted(emails) if (u := self.slack_user(e, deadline))))
        except ProviderError as e:
            log.warning("on-call %s unreadable: %s", schedule.key, e)
            answer = OnCallAnswer(error=str(e))
        ttl = min(ERROR_CACHE_SECONDS, self.cache_seconds) if answer.error else self.cache_seconds
        if ttl:
            self.r.set(key, json.dumps({"users": sorted(answer.users), "error": answer.error}), ex=ttl)
        return answer

    def slack_user(self, email: str, deadline: float | None = None) -> str | None:
        """The Slack user with this email (cached), or None: not found, or Slack not reachable.
        Past `deadline`, an email not cached yet raises ProviderError (the lookup took too long)."""
        key = keys.slack_user_by_email(_digest(email.strip().lower()))
        cached = self.r.get(key)
        if cached is not None:
            return cached or None
        if deadline is not None and time.monotonic() > deadline:
            raise ProviderError(f"matching on-call people to Slack took longer than {self.budget:g} s")
        try:
            user = (self.client.users_lookupByEmail(email=email).get("user") or {}).get("id")
        except SlackApiError as e:
            if e.response.get("error") != "users_not_found":
                log.warning("users.lookupByEmail failed: %s", e.response.get("error"))
                return None  # not cached: asked again next time
            user = None
        except Exception as e:  # noqa: BLE001 - Slack unreachable: this person does not count now
            log.warning("users.lookupByEmail unreachable: %s", type(e).__name__)
            return None
        self.r.set(key, user or "", ex=EMAIL_CACHE_SECONDS if user else NO_USER_CACHE_SECONDS)
        return user
