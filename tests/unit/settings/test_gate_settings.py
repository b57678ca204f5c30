"""The deployment-gate settings: all of a platform's, or none; a bad one is one line naming it."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from bot.settings import SettingsError, load_settings

BASE = {"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_SIGNING_SECRET": "s", "JIT_SECRET_KEY": "k" * 32}
GATES = (
    "GITHUB_APP_ID",
    "GITHUB_APP_PRIVATE_KEY_FILE",
    "GITHUB_WEBHOOK_SECRET",
    "GITHUB_API_URL",
    "GITLAB_URL",
    "GITLAB_WEBHOOK_TOKEN",
    "GITLAB_API_TOKEN",
)


@pytest.fixture
def env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    for name in GATES:
        monkeypatch.delenv(name, raising=False)
    for name, value in BASE.items():
        monkeypatch.setenv(name, value)
    return monkeypatch


@pytest.fixture
def app_key(tmp_path):
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "app.pem"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    return path


def refused(capsys) -> str:
    with pytest.raises(SettingsError):
        load_settings()
    return capsys.readouterr().err.strip()


def test_no_gates_by_default(env):
    s = load_settings()
    assert s.github_app_id is None and s.github_webhook_secret is None and s.gitlab_url is None
    assert s.github_api_url == "https://api.github.com"


def test_a_complete_github_app(env, app_key):
    env.setenv("GITHUB_APP_ID", "271828")
    env.setenv("GITHUB_APP_PRIVATE_KEY_FILE", str(app_key))
    env.setenv("GITHUB_WEBHOOK_SECRET", "whsec")
    env.setenv("GITHUB_API_URL", "https://github.example.com/api/v3/")
    s = load_settings()
    assert s.github_app_id == "271828" and s.github_api_url == "https://github.example.com/api/v3"


def test_half_a_github_app_stops_start_up_naming_what_is_missing(env, app_key, capsys):
    env.setenv("GITHUB_APP_ID", "271828")
    env.setenv("GITHUB_APP_PRIVATE_KEY_FILE", str(app_key))
    line = refused(capsys)
    assert line.startswith("jit: setting GITHUB_WEBHOOK_SECRET is invalid:")
    assert "set all three" in line and "\n" not in line


def test_a_key_file_that_is_not_an_rsa_key_is_named(env, tmp_path, capsys):
    bad = tmp_path / "app.pem"
    bad.write_text("-----BEGIN NONSENSE-----\n")
    env.setenv("GITHUB_APP_PRIVATE_KEY_FILE", str(bad))
    assert refused(capsys).startswith("jit: setting GITHUB_APP_PRIVATE_KEY_FILE is invalid:")


def test_plain_http_is_for_this_machine_only(env, capsys):
    env.setenv("GITLAB_URL", "http://gitlab.example.com")
    env.setenv("GITLAB_WEBHOOK_TOKEN", "t")
    env.setenv("GITLAB_API_TOKEN", "glpat-x")
    assert refused(capsys).startswith("jit: setting GITLAB_URL is invalid:")


def test_half_a_gitlab_stops_start_up(env, capsys):
    env.setenv("GITLAB_URL", "https://gitlab.example.com")
    assert "GITLAB_URL, GITLAB_WEBHOOK_TOKEN and GITLAB_API_TOKEN go together" in refused(capsys)
