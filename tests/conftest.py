"""Shared fixtures: a throwaway Redis, the Slack fake, a policy, and the app wired to them."""

from __future__ import annotations

import pytest
import redis as redislib
from fakes.slack import SlackFake
from support import (  # noqa: F401  (re-exported for older imports)
    BOT_TOKEN,
    GRANT_SCRIPT,
    INTROSPECTION_TOKEN,
    OTHER_TOKEN,
    ROOT,
    SECRET_KEY,
    SIGNING_SECRET,
    WEB_TOKEN,
    Harness,
    RedisServer,
    free_port,
    policy_text,
)


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server):
    client = redislib.Redis.from_url(redis_server.url)
    client.flushall()  # our own throwaway server
    yield redis_server.url
    client.close()


@pytest.fixture
def slack():
    with SlackFake(
        token=BOT_TOKEN,
        usergroups={"S0PRODLEADS": ["U0LEAD3", "U0LEAD4"], "S0SECURITY": ["U0AUDITOR"]},
    ) as fake:
        yield fake


@pytest.fixture
def state_dir(tmp_path):
    d = tmp_path / "grants"
    d.mkdir()
    return d


@pytest.fixture
def policy_file(tmp_path, state_dir):
    p = tmp_path / "jit-policy.yaml"
    p.write_text(policy_text(str(state_dir)))
    return p


@pytest.fixture
def jit_env(monkeypatch, redis_url, slack, policy_file, state_dir):
    env = {
        "REDIS_URL": redis_url,
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack.api_url,
        "JIT_POLICY_FILE": str(policy_file),
        "JIT_SECRET_KEY": SECRET_KEY,
        "JIT_PUBLIC_URL": "http://127.0.0.1:3000",
        "JIT_TEST_STATE": str(state_dir),
        "JIT_GRANT_MAX_ATTEMPTS": "3",
        "JIT_INTROSPECTION_TOKENS": f"secrets-api={INTROSPECTION_TOKEN}",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("SLACK_TEAM_ID", raising=False)
    return env


@pytest.fixture
def rt(jit_env):
    from bot.settings import load_settings
    from bot.wiring import build

    runtime = build(load_settings())
    yield runtime


@pytest.fixture
def app(rt):
    from bot.web.app import create_app

    return create_app(rt)


@pytest.fixture
def http(app):
    return app.test_client()


@pytest.fixture
def jit(rt, http, slack, state_dir):
    return Harness(rt, http, slack, state_dir)
