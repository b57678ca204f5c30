"""Start-up with bad settings or a bad policy prints one clear line naming the problem."""

from __future__ import annotations

import os
import subprocess
import sys

from support import BOT_TOKEN, SECRET_KEY, SIGNING_SECRET


def run(args, env_over, cwd):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JIT_", "SLACK_", "REDIS_"))}
    env.update(env_over)
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args], env=env, capture_output=True, text=True, timeout=60, cwd=cwd
    )


def base_env(policy_file):
    return {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "JIT_SECRET_KEY": SECRET_KEY,
        "JIT_POLICY_FILE": str(policy_file),
    }


def test_missing_setting_names_the_variable(tmp_path, policy_file):
    env = base_env(policy_file)
    del env["SLACK_SIGNING_SECRET"]
    p = run(["worker", "--burst"], env, tmp_path)
    assert p.returncode != 0
    assert p.stderr.strip() == (
        "jit: setting SLACK_SIGNING_SECRET is required but not set: "
        "the Signing Secret from your Slack app's Basic Information page"
    )
    assert "Traceback" not in p.stderr


def test_every_bad_setting_is_reported_in_one_start(tmp_path, policy_file):
    """Three problems, one run: a line for each, naming the setting and how to fix it."""
    env = {"JIT_POLICY_FILE": str(policy_file), "JIT_SECRET_KEY": "short", "REDIS_URL": "http://nope"}
    p = run(["serve"], env, tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    lines = sorted(p.stderr.strip().splitlines())
    assert lines == [
        "jit: setting JIT_SECRET_KEY is invalid: must be at least 32 characters (e.g. `openssl rand -hex 32`)",
        "jit: setting REDIS_URL is invalid: must start with redis://, rediss://, unix:// or redis+sentinel://",
        "jit: setting SLACK_BOT_TOKEN is required but not set: "
        "the Bot User OAuth Token (xoxb-…) from your Slack app's OAuth & Permissions page",
        "jit: setting SLACK_SIGNING_SECRET is required but not set: "
        "the Signing Secret from your Slack app's Basic Information page",
    ]


def test_invalid_setting_names_the_variable(tmp_path, policy_file):
    env = {**base_env(policy_file), "JIT_SECRET_KEY": "short"}
    p = run(["serve"], env, tmp_path)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "JIT_SECRET_KEY" in lines[0] and "Traceback" not in p.stderr
    env = {**base_env(policy_file), "REDIS_URL": "http://nope"}
    p = run(["serve"], env, tmp_path)
    assert p.stderr.strip().startswith("jit: setting REDIS_URL is invalid")


def test_bad_policy_stops_startup_with_its_location(tmp_path, policy_file):
    bad = tmp_path / "bad.yaml"
    bad.write_text(policy_file.read_text().replace("approvals_required: 2", "approvals_required: 2\n    colour: blue"))
    p = run(["serve"], {**base_env(bad)}, tmp_path)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    first = p.stderr.strip().splitlines()[0]
    assert first.startswith("jit: invalid policy:") and "colour" in first and "unknown key" in first
    assert f"{bad}:" in first


def test_policy_check_cli(tmp_path, policy_file):
    ok = run(["policy", "check", str(policy_file)], {}, tmp_path)
    assert ok.returncode == 0 and "ok" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(policy_file.read_text().replace("type: token", "type: carrier-pigeon"))
    p = run(["policy", "check", str(bad)], {}, tmp_path)
    assert p.returncode == 1
    assert "carrier-pigeon" in p.stdout and "grant.type" in p.stdout


def test_a_policy_file_that_is_not_there_is_named(tmp_path, policy_file):
    missing = tmp_path / "nope.yaml"
    p = run(["worker", "--burst"], base_env(missing), tmp_path)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip() == f"jit: {missing}: policy file not found: set JIT_POLICY_FILE to your policy's path"
