"""docker-compose.yml, Dockerfile and .env.example say the same things as the code (no Docker engine needed)."""

from __future__ import annotations

import re

import pytest
import yaml
from support import ROOT

from bot.cli import build_parser
from bot.settings import Settings

SETTINGS = {f.alias for f in Settings.model_fields.values()}
REQUIRED = {f.alias for f in Settings.model_fields.values() if f.is_required()}


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def env_example_names() -> list[str]:
    """`NAME=value` lines and `# NAME=default` lines (optional settings shown at their default)."""
    text = (ROOT / ".env.example").read_text()
    return re.findall(r"^(?:# )?([A-Z][A-Z0-9_]*)=", text, flags=re.M)


def test_env_example_lists_exactly_the_settings():
    names = env_example_names()
    assert len(names) == len(set(names)), "a variable is listed twice"
    assert set(names) == SETTINGS, f"missing: {sorted(SETTINGS - set(names))}, unknown: {sorted(set(names) - SETTINGS)}"
    text = (ROOT / ".env.example").read_text()
    for name in REQUIRED:  # required ones are live lines, each with a comment above it
        assert re.search(rf"^# .+\n{name}=", text, flags=re.M), name


def test_env_example_values_are_accepted_once_the_secrets_are_filled(tmp_path, monkeypatch):
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    env_file = tmp_path / ".env"
    # uncomment every optional line: its default, as written, must be valid too
    env_file.write_text(re.sub(r"^# ([A-Z][A-Z0-9_]*=)", r"\1", (ROOT / ".env.example").read_text(), flags=re.M))
    monkeypatch.setenv("SLACK_SIGNING_SECRET", "signing-secret")
    monkeypatch.setenv("JIT_SECRET_KEY", "k" * 32)
    s = Settings(_env_file=str(env_file))
    assert s.slack_bot_token.get_secret_value() == "xoxb-"
    assert s.jit_public_url == "https://jit.example.com"
    defaults = Settings(SLACK_BOT_TOKEN="x", SLACK_SIGNING_SECRET="y", JIT_SECRET_KEY="k" * 32, _env_file=None)
    for field in (
        "redis_url",
        "jit_exec_timeout",
        "jit_rate_limit",
        "jit_request_retention",
        "jit_log_level",
    ):
        assert getattr(s, field) == getattr(defaults, field), f"{field}: .env.example shows a wrong default"


def test_compose_runs_redis_with_aof_one_server_and_two_workers():
    c = compose()
    services = c["services"]
    assert set(services) == {"redis", "bot", "worker"}

    redis = services["redis"]
    cmd = redis["command"]
    assert cmd[0] == "redis-server" and cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert any(v.endswith(":/data") for v in redis["volumes"])
    assert "redis-data" in c["volumes"]

    for name in ("bot", "worker"):
        s = services[name]
        assert s["env_file"] == ".env"
        assert s["environment"]["REDIS_URL"] == "redis://redis:6379/0"
        assert s["depends_on"]["redis"]["condition"] == "service_healthy"
        assert set(s["environment"]) <= SETTINGS  # anything set here is a real setting
        policy = s["environment"]["JIT_POLICY_FILE"]
        assert any(v.split(":")[1] == policy for v in s["volumes"])
        assert int(s["stop_grace_period"].rstrip("s")) > 30  # longer than a grant command may run
    assert services["worker"]["deploy"]["replicas"] == 2


@pytest.mark.parametrize(("service", "subcommand"), [("bot", "serve"), ("worker", "worker")])
def test_compose_commands_are_the_jit_commands_the_tests_run(service, subcommand):
    cmd = compose()["services"][service]["command"]
    assert cmd[0] == "jit"
    args = build_parser().parse_args(cmd[1:])  # the real CLI accepts them
    assert args.command == subcommand
    if subcommand == "serve":
        assert args.host == "0.0.0.0"
        published = compose()["services"]["bot"]["ports"]
        assert f"{args.port}:{args.port}" in published


def test_dockerfile_builds_a_small_non_root_image():
    text = "\n".join(ln for ln in (ROOT / "Dockerfile").read_text().splitlines() if not ln.startswith("#"))
    lines = [" ".join(ln.split()) for ln in text.replace("\\\n", " ").splitlines() if ln.strip()]
    assert lines[0] == "FROM python:3.11-slim"
    run = next(ln for ln in lines if ln.startswith("RUN "))
    assert "pip install" in run and "useradd" in run
    assert "PIP_NO_CACHE_DIR=1" in "\n".join(lines)
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users == ["jit"]
    assert lines.index("USER jit") > lines.index(run)  # installed as root, runs as jit
    cmd = yaml.safe_load(next(ln for ln in lines if ln.startswith("CMD ")).removeprefix("CMD "))
    assert build_parser().parse_args(cmd[1:]).command == "serve" and cmd[0] == "jit"

    ignored = (ROOT / ".dockerignore").read_text().split()
    for secret_or_bulk in (".env", ".git", ".venv", "tests", ".jit"):
        assert secret_or_bulk in ignored  # never baked into the image
