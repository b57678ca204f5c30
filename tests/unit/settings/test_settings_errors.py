"""Bad settings: every one reported in the same start, a line each naming it and what to put there."""

from __future__ import annotations

import pytest

from bot.settings import SettingsError, load_settings

REQUIRED = ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "JIT_SECRET_KEY")


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    for name in (*REQUIRED, "REDIS_URL", "JIT_RATE_LIMIT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def refused(capsys) -> list[str]:
    with pytest.raises(SettingsError):
        load_settings()
    return capsys.readouterr().err.splitlines()


def test_every_missing_setting_at_once_with_where_to_find_it(env, capsys):
    assert refused(capsys) == [
        "jit: setting SLACK_BOT_TOKEN is required but not set: "
        "the Bot User OAuth Token (xoxb-…) from your Slack app's OAuth & Permissions page",
        "jit: setting SLACK_SIGNING_SECRET is required but not set: "
        "the Signing Secret from your Slack app's Basic Information page",
        "jit: setting JIT_SECRET_KEY is required but not set: "
        "at least 32 random characters: `openssl rand -hex 32` (`jit init` writes one into .env)",
    ]


def test_missing_and_invalid_settings_together(env, capsys):
    env.setenv("SLACK_BOT_TOKEN", "xoxb-1")
    env.setenv("SLACK_SIGNING_SECRET", " ")
    env.setenv("JIT_SECRET_KEY", "k" * 32)
    env.setenv("REDIS_URL", "localhost:6379")
    env.setenv("JIT_RATE_LIMIT", "lots")
    lines = refused(capsys)
    assert lines == [
        "jit: setting REDIS_URL is invalid: must start with redis://, rediss://, unix:// or redis+sentinel://",
        "jit: setting SLACK_SIGNING_SECRET is invalid: must not be empty: "
        "the Signing Secret from your Slack app's Basic Information page",
        "jit: setting JIT_RATE_LIMIT is invalid: Input should be a valid integer, unable to parse string as an integer",
    ]
    assert not any("xoxb-1" in line for line in lines)  # a value is never echoed
