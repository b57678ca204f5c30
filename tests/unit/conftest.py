"""Fixtures of the unit tests: a bare Store over the throwaway Redis (its kicks and audit outbox in
plain view), a Runtime with the policy rules of issue 9 (break glass, windows, auto-approval),
policy reloads, a recording grant backend. Helpers live in unit_support.py.

Everything runs against the suite's own redis-server (tests/conftest.py flushes it per test; it
is ours). Nothing goes through HTTP: services are called directly, listeners with mocks; user
groups are looked up in the suite's Slack fake."""

from __future__ import annotations

import pytest
import redis as redislib
from policy_rules_support import rules_policy_text
from unit_support import OFFICE_HOURS, Bare, HeldOutbox, KickLog, RecordingBackend

from bot.store.requests import Store
from bot.wiring import load_policy


@pytest.fixture
def bare(redis_url) -> Bare:
    r = redislib.Redis.from_url(redis_url, decode_responses=True)
    kicks, outbox = KickLog(), HeldOutbox()
    yield Bare(r, Store(r, outbox, retention_s=3600, effects=kicks), kicks, outbox)
    r.close()


@pytest.fixture
def rules_policy(policy_file, state_dir):
    """The common test policy plus issue 9's rules (break glass, per-environment approvers,
    auto-approval, windows) and `office-hours`, written before the Runtime first reads it."""
    text = rules_policy_text(str(state_dir)).replace(
        "actions: [deploy-prod, read-secret, quick, deploy-staging, deploy-env, change-db]",
        "actions: [deploy-prod, read-secret, quick, deploy-staging, deploy-env, change-db, office-hours]",
    )
    policy_file.write_text(text + OFFICE_HOURS)
    return policy_file


@pytest.fixture
def rrt(rules_policy, rt):
    """A Runtime under the rules policy."""
    assert rt.policy.action("office-hours") is not None
    return rt


@pytest.fixture
def repolicy(policy_file):
    """Reload the policy with an edit (`old` → `new`, each replaced once): what an operator's
    change does to requests already in flight."""

    def reload(rt, *edits: tuple[str, str]) -> None:
        text = policy_file.read_text()
        for old, new in edits:
            assert old in text, f"{old!r} is not in the policy"
            text = text.replace(old, new, 1)
        policy_file.write_text(text)
        rt.set_policy(load_policy(policy_file))

    return reload


@pytest.fixture
def backend() -> RecordingBackend:
    return RecordingBackend()
