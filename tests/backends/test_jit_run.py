"""`jit run` end to end, with real processes: `jit serve`, `jit worker`, the client as its own process,
and a command that uses its credential against real PostgreSQL and a real Redis.

The promises: the credential reaches the command's environment only and never the job log, the
transcript, Slack, the server's logs or the audit trail; the grant is released the moment the
command exits; a revoke stops the command (SIGTERM); the session record reaches the request's
thread and `jit audit export --request`, where its transcript matches the audited digest."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest
import redis as redislib
from fakes.slack import block_action
from procs import JIT, Stack, wait_until
from support import ROOT, WEB_TOKEN, policy_text

from bot.store import keys

CLIENT = ROOT / "client" / "jit_client.py"
PG_ENV = "JIT_TEST_RUN_PG_DSN"
REDIS_ENV = "JIT_TEST_RUN_REDIS_URL"


def run_policy(state_dir: str, deployer: str) -> str:
    text = policy_text(state_dir).replace(
        "actions: [deploy-prod, read-secret, quick]", "actions: [deploy-prod, read-secret, quick, db-read, cache-rw]"
    )
    return (
        text
        + f"""\
  db-read:
    description: Read the app tables
    approvers: [U0LEAD1]
    ttl: {{default: 15m, max: 1h}}
    session: {{transcript_in_slack: true}}
    grant:
      type: postgres
      dsn_env: {PG_ENV}
      grant_roles: [{deployer}]
  cache-rw:
    description: Read and write the cache
    approvers: [U0LEAD1]
    ttl: {{default: 15m, max: 1h}}
    grant:
      type: redis_acl
      url_env: {REDIS_ENV}
      rules: ["~cache:*", "+get", "+set", "+ping"]
"""
    )


@pytest.fixture(scope="module")
def stack(pg_server, redis_server):
    with Stack(
        extra_env={"JIT_RATE_LIMIT": "0", PG_ENV: pg_server.admin_dsn(), REDIS_ENV: redis_server.admin_url()},
        policy=run_policy("unused", pg_server.deployer),
    ) as s:
        s.serve()
        s.worker()
        s.pg = pg_server
        s.redis_target = redis_server
        yield s


class Client:
    """`python3 jit_client.py run …` as a CI step runs it, its output in files."""

    def __init__(self, stack: Stack, argv: list[str], tmp: Path) -> None:
        self.stack = stack
        self.run_id = str(secrets.randbelow(10**9))
        self.out_path, self.err_path = tmp / "out.log", tmp / "err.log"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("JIT_", "PG", "REDIS_", "DATABASE_URL"))},
            "JIT_URL": stack.url,
            "JIT_TOKEN": WEB_TOKEN,
            "GITHUB_ACTIONS": "true",
            "GITHUB_REPOSITORY": "acme/app",
            "GITHUB_RUN_ID": self.run_id,
            "GITHUB_JOB": "job",
            "RUNNER_NAME": "runner-7",
        }
        self.before = set(redislib.Redis.from_url(stack.redis.url, decode_responses=True).zrange("jit:idx:all", 0, -1))
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, str(CLIENT), "run", *argv], env=env, stdout=out, stderr=err)

    def output(self) -> tuple[str, str]:
        return self.out_path.read_text(errors="replace"), self.err_path.read_text(errors="replace")

    def request_id(self) -> str:
        r = redislib.Redis.from_url(self.stack.redis.url, decode_responses=True)

        def find():
            ids = set(r.zrange("jit:idx:all", 0, -1)) - self.before
            return next(iter(ids)) if ids else None

        return wait_until(find, timeout=60, message="the client's request")

    def approve(self) -> str:
        rid = self.request_id()
        ts = self.stack.message_ts(rid, timeout=60)
        channel = "C0APPROVALS"
        self.stack.slack_post(block_action("jit_approve", rid, "U0LEAD1", channel=channel, message_ts=ts))
        return rid

    def wait(self, timeout: float = 120) -> int:
        return self.proc.wait(timeout)


def seen_by_command(path: Path) -> dict:
    """The secrets the command wrote to a side file (a test's window into its environment), to look
    for them where they must not be."""
    wait_until(path.exists, timeout=60, message="the command's side file")
    return json.loads(path.read_text())


def leaks(seen: dict) -> list[str]:
    secret = seen["password"]
    return [secret, urllib.parse.quote(secret, safe="")]


def audit_export(stack: Stack, rid: str) -> list[dict]:
    from support import SECRET_KEY

    env = {**stack.env, "JIT_SECRET_KEY": SECRET_KEY}
    done = subprocess.run(
        [*JIT, "audit", "export", "--request", rid], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


PG_SCRIPT = r"""
import json, os, sys, psycopg
with open(sys.argv[1], "w") as f:
    json.dump({"password": os.environ["PGPASSWORD"], "username": os.environ["PGUSER"]}, f)
with psycopg.connect("") as conn:  # libpq reads PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE
    n = conn.execute("SELECT count(*) FROM app_items").fetchone()[0]
    print(f"rows={n}")
    print("password is", os.environ["PGPASSWORD"])
    print("url is", os.environ["DATABASE_URL"])
    print("pipeline token:", os.environ.get("JIT_TOKEN", "absent"))
with psycopg.connect(os.environ["DATABASE_URL"]) as conn:
    print("again", conn.execute("SELECT count(*) FROM app_items").fetchone()[0])
raise SystemExit(4)
"""


def test_a_command_uses_its_postgres_credential_and_the_grant_ends_with_it(stack, tmp_path):
    side = tmp_path / "seen.json"
    client = Client(
        stack, ["db-read", "--reason", "report", "--", sys.executable, "-c", PG_SCRIPT, str(side)], tmp_path
    )
    rid = client.approve()
    assert client.wait() == 4  # the command's exit code
    credential = seen_by_command(side)
    out, err = client.output()
    assert "rows=2" in out and "again 2" in out, (out, err)
    assert "password is ***" in out and "url is ***" in out
    assert "pipeline token: absent" in out
    for leaked in leaks(credential):
        assert leaked not in out + err

    # released the moment it exited: revoked by the pipeline, not left to expire
    r = redislib.Redis.from_url(stack.redis.url, decode_responses=True)
    assert r.hget(keys.request(rid), "status") == "revoked"
    assert r.hget(keys.request(rid), "revoked_by") == "pipeline:web-ci"
    with stack.pg.admin() as conn:
        wait_until(
            lambda: (
                conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (credential["username"],)).fetchone() is None
            ),
            timeout=60,
            message="the role dropped",
        )

    # the thread: the summary line, then (policy: transcript_in_slack) the masked transcript
    ts = stack.message_ts(rid)
    line = stack.slack.wait_for(
        lambda c: (
            c.method == "chat.postMessage"
            and c.params.get("thread_ts") == ts
            and str(c.params.get("text", "")).startswith("Used ")
        ),
        timeout=60,
    )
    text = line.params["text"]
    assert f"by run {client.run_id}" in text and "exit 4" in text and "released" in text and "early" in text
    snippet = stack.slack.wait_for(
        lambda c: (
            c.method == "chat.postMessage" and c.params.get("thread_ts") == ts and "```" in c.params.get("text", "")
        ),
        timeout=60,
    )
    assert "rows=2" in snippet.params["text"] and "password is ***" in snippet.params["text"]

    # the audit trail: session.ended carries the digest; the export attaches the transcript
    rows = audit_export(stack, rid)
    ended = [row for row in rows if row["event"] == "session.ended"]
    assert len(ended) == 1
    details = ended[0]["details"]
    assert "transcript" not in details and details["exit_code"] == 4 and details["run"] == client.run_id
    assert details["runner"] == "runner-7"
    transcript = ended[0]["transcript"]
    assert hashlib.sha256(transcript.encode()).hexdigest() == details["transcript_sha256"]
    assert "rows=2" in transcript and "password is ***" in transcript

    # nowhere else either: Slack, the server's and the worker's logs, the audit trail
    everywhere = stack.slack.all_text() + "".join(p.log() for p in stack.procs) + json.dumps(rows)
    for leaked in leaks(credential):
        assert leaked not in everywhere


def test_the_session_is_recorded_once_and_only_with_its_request_token(stack, tmp_path):
    import requests

    client = Client(stack, ["db-read", "--reason", "once", "--", sys.executable, "-c", "print('hi')"], tmp_path)
    rid = client.approve()
    assert client.wait() == 0
    r = redislib.Redis.from_url(stack.redis.url, decode_responses=True)
    wait_until(lambda: r.exists(keys.session(rid)), message="the session record")
    before = r.get(keys.session(rid))
    body = {
        "started_at": "2026-01-01T00:00:00Z",
        "ended_at": "2026-01-01T00:00:01Z",
        "exit_code": 0,
        "duration_ms": 1000,
        "output_bytes": 0,
        "output_lines": 0,
        "transcript": "",
        "transcript_sha256": hashlib.sha256(b"").hexdigest(),
    }
    url = f"{stack.url}/v1/requests/{rid}/session"
    # the pipeline's own token is not the request's token: nothing to see here
    resp = requests.post(url, json=body, headers={"Authorization": f"Bearer {WEB_TOKEN}"}, timeout=10)
    assert resp.status_code == 404
    assert r.get(keys.session(rid)) == before
    assert r.pttl(keys.session(rid)) > 0 and r.pttl(keys.session(rid)) <= r.pttl(keys.request(rid)) + 1000


REDIS_SCRIPT = r"""
import json, os, signal, sys, time, urllib.parse, redis
with open(sys.argv[1], "w") as f:
    json.dump({"password": urllib.parse.unquote(urllib.parse.urlsplit(os.environ["REDIS_URL"]).password)}, f)
def stop(signum, frame):
    print("got SIGTERM", flush=True)
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
c = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
c.set("cache:run", "1")
print("connected as", os.environ["REDIS_URL"], flush=True)
while True:  # work that goes on after the credential stopped working: only the stop ends it
    try:
        c.set("cache:run", str(time.time()))
        print("tick", flush=True)
    except redis.RedisError:
        print("redis refused", flush=True)
    time.sleep(0.2)
"""


def test_a_revoke_stops_the_command(stack, tmp_path):
    side = tmp_path / "seen.json"
    argv = ["cache-rw", "--reason", "warm", "--grace", "20s", "--", sys.executable, "-c", REDIS_SCRIPT, str(side)]
    client = Client(stack, argv, tmp_path)
    rid = client.approve()
    credential = seen_by_command(side)
    wait_until(lambda: "tick" in client.output()[0], timeout=60, message="the command running")
    assert stack.redis_target.admin().get("cache:run") is not None  # it really wrote to Redis
    ts = stack.message_ts(rid)
    stack.slack_post(
        block_action("jit_revoke", rid, "U0LEAD1", channel="C0APPROVALS", message_ts=ts, button_text="Revoke now")
    )
    assert client.wait() == 143
    out, err = client.output()
    assert "got SIGTERM" in out
    assert "the grant was revoked by U0LEAD1: stopping the command" in err
    assert "connected as ***" in out
    for leaked in leaks(credential):
        assert leaked not in out + err
    rows = audit_export(stack, rid)
    ended = next(row for row in rows if row["event"] == "session.ended")
    assert ended["details"]["ended_by"] == "grant_end" and ended["details"]["exit_code"] == 143
