"""`jit init`: a newcomer's first command writes a .env jit starts with and a starter policy."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from dotenv import dotenv_values

from bot.settings import Settings
from bot.wiring import load_policy

#: Settings a user's shell may carry; `jit init` must not depend on any of them.
NAMES = tuple(f.alias for f in Settings.model_fields.values())


def run_init(folder: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in NAMES}
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "init", "--dir", str(folder), *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def printed_token(out: str) -> str:
    return re.search(r"^  (jit_\S+)$", out, flags=re.M).group(1)


def test_init_writes_a_private_env_jit_starts_with_and_a_starter_policy(tmp_path, monkeypatch):
    proc = run_init(tmp_path)
    assert proc.returncode == 0, proc.stderr
    env_file, policy_file = tmp_path / ".env", tmp_path / "jit-policy.yaml"

    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    # the policy holds token hashes only, and the container's user must read it through the bind mount
    assert stat.S_IMODE(policy_file.stat().st_mode) == 0o644

    for name in NAMES:
        monkeypatch.delenv(name, raising=False)
    s = Settings(_env_file=str(env_file))  # every required setting is there, and valid
    assert len(s.jit_secret_key.get_secret_value()) >= 32
    assert s.jit_metrics_token is not None
    assert s.slack_bot_token.get_secret_value() == "xoxb-not-configured"
    assert len(s.slack_signing_secret.get_secret_value()) >= 32
    values = dotenv_values(env_file)
    for name, value in values.items():  # every live line has a comment above it
        assert re.search(rf"^# .+\n(# .+\n)*{name}={re.escape(value)}$", env_file.read_text(), flags=re.M), name

    token = printed_token(proc.stdout)
    policy = load_policy(policy_file)
    assert policy.pipelines["example-ci"].token_sha256 == hashlib.sha256(token.encode()).hexdigest()
    assert token not in policy_file.read_text() and token not in env_file.read_text()
    for line in ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET", "JIT_PUBLIC_URL", "docker compose up"):
        assert line in proc.stdout, line


def test_every_init_makes_new_secrets(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    assert run_init(a).returncode == run_init(b).returncode == 0
    va, vb = dotenv_values(a / ".env"), dotenv_values(b / ".env")
    for name in ("JIT_SECRET_KEY", "JIT_METRICS_TOKEN", "SLACK_SIGNING_SECRET"):
        assert va[name] != vb[name], name
    assert (a / "jit-policy.yaml").read_text() != (b / "jit-policy.yaml").read_text()


def test_init_never_overwrites(tmp_path):
    (tmp_path / ".env").write_text("JIT_SECRET_KEY=the-one-that-decrypts-everything-stored\n")
    (tmp_path / "jit-policy.yaml").write_text("# mine\n")
    proc = run_init(tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / ".env").read_text() == "JIT_SECRET_KEY=the-one-that-decrypts-everything-stored\n"
    assert (tmp_path / "jit-policy.yaml").read_text() == "# mine\n"
    assert proc.stdout.count("left as it is") == 2
    assert "jit_" not in proc.stdout  # no token: no policy was written for it

    # one of the two missing: only that one is written
    (tmp_path / "jit-policy.yaml").unlink()
    proc = run_init(tmp_path)
    assert proc.returncode == 0 and "wrote" in proc.stdout
    assert (tmp_path / ".env").read_text() == "JIT_SECRET_KEY=the-one-that-decrypts-everything-stored\n"
    assert load_policy(tmp_path / "jit-policy.yaml").pipelines


def test_a_directory_docker_left_in_place_of_the_policy_is_named(tmp_path):
    (tmp_path / "jit-policy.yaml").mkdir()  # what `docker compose up` did before the file existed
    proc = run_init(tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "jit-policy.yaml is a directory" in proc.stderr
    assert not (tmp_path / ".env").exists()


def test_slack_values_and_the_public_url_come_from_the_environment_and_flags(tmp_path):
    proc = run_init(
        tmp_path,
        "--public-url",
        "https://jit.acme.test",
        SLACK_BOT_TOKEN="xoxb-1111-2222-abcdef",
        SLACK_SIGNING_SECRET="0123456789abcdef0123456789abcdef",
    )
    assert proc.returncode == 0, proc.stderr
    values = dotenv_values(tmp_path / ".env")
    assert values["SLACK_BOT_TOKEN"] == "xoxb-1111-2222-abcdef"
    assert values["SLACK_SIGNING_SECRET"] == "0123456789abcdef0123456789abcdef"
    assert values["JIT_PUBLIC_URL"] == "https://jit.acme.test"
    assert "SLACK_BOT_TOKEN in .env" not in proc.stdout and "JIT_PUBLIC_URL in .env" not in proc.stdout


@pytest.mark.parametrize("value", ["has space", "dollar$sign", "quote'd", "hash#tag"])
def test_a_value_a_env_file_cannot_carry_is_refused(tmp_path, value):
    proc = run_init(tmp_path, SLACK_SIGNING_SECRET=value)
    assert proc.returncode == 1 and "SLACK_SIGNING_SECRET" in proc.stderr
    assert value not in proc.stderr  # a secret is never echoed
    assert not (tmp_path / ".env").exists() and not (tmp_path / "jit-policy.yaml").exists()
