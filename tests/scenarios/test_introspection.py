"""/v1/introspect answers a resource server only about tokens meant for its own audiences."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from support import BOT_TOKEN, SECRET_KEY, SIGNING_SECRET, WEB_TOKEN

SECRETS_API = "introspect-secrets-api-0123456789"  # may ask about tokens for `secrets-api`
OTHER_API = "introspect-other-api-0123456789"  # may ask about `other-api` and `billing`
EVERY = "introspect-every-audience-012345"  # `*`: any audience


@pytest.fixture
def jit_env(jit_env, monkeypatch):
    value = f"secrets-api={SECRETS_API}, other-api={OTHER_API},billing={OTHER_API}, *={EVERY}"
    monkeypatch.setenv("JIT_INTROSPECTION_TOKENS", value)
    return {**jit_env, "JIT_INTROSPECTION_TOKENS": value}


def introspect(jit, token: str, bearer: str | None):
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    return jit.http.post("/v1/introspect", data={"token": token}, headers=headers)


def active_token(jit) -> tuple[str, str]:
    """A live JWT from the `token` backend: action read-secret, audience secrets-api."""
    rid = jit.ask("read-secret")["id"]
    jit.work()
    jit.approve(rid, "U0LEAD1")
    jit.work()
    return rid, jit.credential(rid).get_json()["credential"]["token"]


def test_introspection_is_scoped_to_the_callers_audiences(jit):
    rid, token = active_token(jit)
    for bearer in (SECRETS_API, EVERY):
        live = introspect(jit, token, bearer)
        assert live.status_code == 200 and live.get_json()["active"] is True
        assert live.get_json()["aud"] == "secrets-api" and live.get_json()["jti"] == rid
    # a resource server for another audience learns nothing: the answer of an unknown token
    other = introspect(jit, token, OTHER_API)
    unknown = introspect(jit, "eyJhbGciOiJFZERTQSJ9.e30.sig", OTHER_API)
    assert other.status_code == unknown.status_code == 200
    assert other.get_data() == unknown.get_data()
    assert other.get_json() == {"active": False}


@pytest.mark.parametrize("bearer", [WEB_TOKEN, None, "not-a-configured-token-at-all"])
def test_pipeline_tokens_and_strangers_may_not_introspect(jit, bearer):
    _, token = active_token(jit)
    resp = introspect(jit, token, bearer)
    assert resp.status_code == 401 and resp.get_json()["error"] == "unauthorized"
    assert "active" not in resp.get_json()


def test_released_grant_is_inactive_for_every_caller(jit):
    rid, token = active_token(jit)
    jit.release(rid)
    for bearer in (SECRETS_API, EVERY):
        assert introspect(jit, token, bearer).get_json() == {"active": False}


# ------------------------------------------------------------------------ the setting


def serve_with(tokens: str, tmp_path, policy_file) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JIT_", "SLACK_", "REDIS_"))}
    env.update(
        {
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "JIT_SECRET_KEY": SECRET_KEY,
            "JIT_POLICY_FILE": str(policy_file),
            "JIT_INTROSPECTION_TOKENS": tokens,
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )


@pytest.mark.parametrize(
    "tokens",
    [
        "a-bare-token-without-its-audience",
        f"secrets-api={SECRETS_API},a-bare-token-without-its-audience",
        "=token-without-an-audience-0123",
        "secrets-api=",
        "secrets-api=short",
    ],
)
def test_entry_without_audience_stops_startup_with_one_line(tmp_path, policy_file, tokens):
    p = serve_with(tokens, tmp_path, policy_file)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("jit: setting JIT_INTROSPECTION_TOKENS is invalid:")
    assert "AUDIENCE=TOKEN" in lines[0]
    assert "bare-token" not in lines[0] and "short" not in lines[0] and SECRETS_API not in lines[0]
