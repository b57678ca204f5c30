"""`jit request` / `jit release` against a real server and worker: every exit code, retries, formats;
and the client as users get it: served by jit as one file, or installed alone as `jit-client`."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from fakes.slack import block_action, view_submission
from procs import Stack, wait_until
from support import ROOT, WEB_TOKEN, free_port

import jit_client as client
from bot.store import keys

CLIENT_FILE = ROOT / "client" / "jit_client.py"


@pytest.fixture(scope="module")
def stack():
    with Stack(extra_env={"JIT_RATE_LIMIT": "0"}) as s:
        s.serve()
        s.worker()
        yield s


def run_client(stack, argv, env=None):
    out, err = io.StringIO(), io.StringIO()
    env = {"JIT_URL": stack.url, "JIT_TOKEN": WEB_TOKEN, **(env or {})}
    code = client.main(argv, env=env, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def in_background(stack, argv, env=None):
    result = {}

    def go():
        result["value"] = run_client(stack, argv, env)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t, result


def newest_request(stack, before: set[str]) -> str:
    import redis

    r = redis.Redis.from_url(stack.redis.url, decode_responses=True)

    def find():
        ids = set(r.zrange("jit:idx:all", 0, -1)) - before
        return next(iter(ids)) if ids else None

    return wait_until(find, message="the client's request")


def stored_status(stack, rid: str) -> str:
    """The request's status as the store holds it (the client that timed out kept no token)."""
    import redis

    return redis.Redis.from_url(stack.redis.url, decode_responses=True).hget(keys.request(rid), "status")


def known_ids(stack) -> set[str]:
    import redis

    return set(redis.Redis.from_url(stack.redis.url, decode_responses=True).zrange("jit:idx:all", 0, -1))


def test_granted_prints_env_and_exits_0(stack):
    before = known_ids(stack)
    t, res = in_background(
        stack, ["request", "quick", "--reason", "ship it", "--ttl", "30s", "--format", "env", "--quiet"]
    )
    rid = newest_request(stack, before)
    ts = stack.message_ts(rid)
    stack.slack_post(block_action("jit_approve", rid, "U0LEAD1", channel="C0APPROVALS", message_ts=ts))
    t.join(60)
    code, out, err = res["value"]
    assert code == 0, err
    assert f"export JIT_REQUEST_ID={rid}" in out and "export JIT_CREDENTIAL_USERNAME=" in out
    assert "s3cr3t" not in err  # secrets go to stdout only
    rtoken = next(line.split("=", 1)[1] for line in out.splitlines() if line.startswith("export JIT_REQUEST_TOKEN="))
    rtoken = rtoken.strip("'")
    code, _, _ = run_client(stack, ["release", rid, "--request-token", rtoken, "--quiet"], env={"JIT_TOKEN": ""})
    assert code == 0
    assert stack.get(rid, rtoken).json()["status"] == "revoked"


def test_denied_exits_10_with_who_and_why(stack):
    before = known_ids(stack)
    t, res = in_background(stack, ["request", "deploy-prod", "--reason", "hotfix"])
    rid = newest_request(stack, before)
    ts = stack.message_ts(rid)
    stack.slack_post(block_action("jit_deny", rid, "U0LEAD2", channel="C0PROD", message_ts=ts, trigger_id="1.2.3"))
    call = stack.slack.wait_for(lambda c: c.method == "views.open" and rid in json.dumps(c.params), timeout=20)
    view = call.params["view"]
    stack.slack_post(
        view_submission(
            view["callback_id"],
            view["private_metadata"],
            {"reason": {"reason_input": "freeze until monday"}},
            "U0LEAD2",
        )
    )
    t.join(60)
    code, _, err = res["value"]
    assert code == 10
    assert "U0LEAD2" in err and "freeze until monday" in err


def test_client_timeout_exits_11_and_cancels(stack):
    before = known_ids(stack)
    code, _, _ = run_client(stack, ["request", "deploy-prod", "--reason", "slow", "--timeout", "2s", "--quiet"])
    assert code == 11
    rid = newest_request(stack, before)
    assert stored_status(stack, rid) == "cancelled"


def test_cancelled_elsewhere_exits_12(stack):
    import requests

    before = known_ids(stack)
    key = f"cancel-elsewhere-{time.time_ns()}"
    t, res = in_background(stack, ["request", "deploy-prod", "--reason", "x", "--quiet", "--idempotency-key", key])
    rid = newest_request(stack, before)
    # another step of the same job asks with the same key, gets the request token, and cancels
    again = stack.ask("deploy-prod", WEB_TOKEN, reason="x", headers={"Idempotency-Key": key})
    assert again.status_code == 200 and again.json()["id"] == rid
    resp = requests.delete(
        f"{stack.url}/v1/requests/{rid}",
        timeout=10,
        headers={"Authorization": f"Bearer {again.json()['request_token']}"},
    )
    assert resp.status_code == 200
    t.join(60)
    assert res["value"][0] == 12


def test_usage_and_server_errors(stack):
    assert run_client(stack, ["request", "quick"])[0] == 2  # --reason missing
    code, _, err = run_client(stack, ["request", "no-such-action", "--reason", "x", "--quiet"])
    assert code == 1 and "unknown action" in err


def test_retried_step_does_not_ask_twice_and_github_format(stack, tmp_path):
    gh_env = tmp_path / "github_env"
    env = {
        "GITHUB_ACTIONS": "true",
        "GITHUB_REPOSITORY": "acme/web",
        "GITHUB_RUN_ID": "777",
        "GITHUB_RUN_ATTEMPT": "1",
        "GITHUB_JOB": "deploy",
        "GITHUB_ENV": str(gh_env),
        "GITHUB_SHA": "abc",
        "GITHUB_REF": "refs/heads/main",
    }
    before = known_ids(stack)
    first = run_client(stack, ["request", "quick", "--reason", "r", "--no-wait", "--quiet"], env)
    assert first[0] == 0
    rid = newest_request(stack, before)
    t, res = in_background(stack, ["request", "quick", "--reason", "r", "--format", "github", "--quiet"], env)
    ts = stack.message_ts(rid)
    stack.slack_post(block_action("jit_approve", rid, "U0LEAD1", channel="C0APPROVALS", message_ts=ts))
    t.join(60)
    code, out, _ = res["value"]
    assert code == 0
    assert known_ids(stack) - before == {rid}  # the retried step found the same request
    posts = [c for c in stack.slack.calls("chat.postMessage") if rid in json.dumps(c.params)]
    assert len(posts) == 1
    written = gh_env.read_text()
    password = f"pw-{rid}-s3cr3t"
    assert f"::add-mask::{password}" in out
    assert password in written and f"JIT_REQUEST_ID={rid}" in written
    # on stdout the password is only in mask commands (its own, and JIT_CREDENTIAL's)
    masks = [line for line in out.splitlines() if line.startswith("::add-mask::")]
    assert f"::add-mask::{password}" in masks
    assert any(line.startswith("::add-mask::{") and password in line for line in masks)
    assert password not in "\n".join(line for line in out.splitlines() if line not in masks)


def test_long_poll_answers_as_soon_as_status_changes(stack):
    r = stack.ask("quick", WEB_TOKEN, ttl="30s")
    rid = r.json()["id"]
    ts = stack.message_ts(rid)
    started = {}

    def approve_soon():
        time.sleep(1.0)
        started["t"] = time.time()
        stack.slack_post(block_action("jit_approve", rid, "U0LEAD1", channel="C0APPROVALS", message_ts=ts))

    threading.Thread(target=approve_soon, daemon=True).start()
    t0 = time.time()
    body = stack.get(rid, WEB_TOKEN, wait=30).json()
    assert body["status"] in ("approved", "active")
    assert time.time() - t0 < 25  # woken by the change, not by the 30 s deadline


# ------------------------------------------------------------------ as a pipeline runs it


def shell_env(stack) -> dict[str, str]:
    return {
        "PATH": os.environ["PATH"],
        "JIT_URL": stack.url,
        "JIT_TOKEN": WEB_TOKEN,
        "PY": sys.executable,
        "CLIENT": client.__file__,
    }


def test_jit_takes_options_before_the_action_and_the_id(stack):
    jit = [sys.executable, "-m", "bot.cli"]
    env = {"PATH": os.environ["PATH"], "JIT_URL": stack.url, "JIT_TOKEN": WEB_TOKEN}
    asked = subprocess.run(
        [*jit, "request", "--reason", "x", "--no-wait", "--quiet", "read-secret"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=60,
    )
    assert asked.returncode == 0, asked.stderr
    handle = json.loads(asked.stdout)
    released = subprocess.run(
        [*jit, "release", "--url", stack.url, "--quiet", handle["id"], "--request-token", handle["request_token"]],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
        cwd=ROOT,
        timeout=60,
    )
    assert released.returncode == 0, released.stderr
    assert stored_status(stack, handle["id"]) == "cancelled"


def test_a_token_grant_exported_to_the_shell_leaves_the_next_request_working(stack, tmp_path):
    """The `token` backend's credential has a field `token`: it must not become $JIT_TOKEN."""
    script = """
        VARS="$("$PY" "$CLIENT" request read-secret --reason first --format env --quiet)" || exit 90
        eval "$VARS"
        "$PY" "$CLIENT" request quick --reason second --no-wait --format json --quiet > second.json || exit 91
        printf '%s\n' "$JIT_TOKEN" "$JIT_CREDENTIAL_TOKEN" "$JIT_REQUEST_ID" > seen.txt
        "$PY" "$CLIENT" release --quiet || exit 92
    """
    before = known_ids(stack)
    proc = subprocess.Popen(
        ["sh", "-c", script],
        env=shell_env(stack),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        rid = newest_request(stack, before)
        stack.slack_post(
            block_action("jit_approve", rid, "U0LEAD1", channel="C0APPROVALS", message_ts=stack.message_ts(rid))
        )
        _, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    pipeline_token, credential_token, first_id = (tmp_path / "seen.txt").read_text().splitlines()
    assert pipeline_token == WEB_TOKEN and first_id == rid
    assert credential_token.count(".") == 2  # the grant's JWT, under its own name
    # another action: a new request (read-secret again would hand back the grant this run holds)
    second = json.loads((tmp_path / "second.json").read_text())
    assert second["id"] != rid and second["request_token"]
    assert stored_status(stack, rid) == "revoked"  # released with what the eval left in the shell


def test_a_server_that_is_down_is_announced_with_the_deadline():
    down = f"http://127.0.0.1:{free_port()}"
    done = subprocess.run(
        [
            sys.executable,
            client.__file__,
            "request",
            "quick",
            "--reason",
            "r",
            "--url",
            down,
            "--token",
            "t",
            "--timeout",
            "3s",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"]},
        timeout=60,
    )
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    announced = [line for line in lines if re.search(r"until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", line)]
    assert len(announced) == 1 and down in announced[0], done.stderr
    assert "giving up" in lines[-1]


# ------------------------------------------------------------------ GET /v1/client.py


def fetch(url: str, headers: dict[str, str] | None = None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_the_server_serves_the_client_file_byte_for_byte(stack):
    status, headers, body = fetch(stack.url + "/v1/client.py")
    assert status == 200
    expected = CLIENT_FILE.read_bytes()
    assert body == expected
    assert headers["Content-Type"] == "text/x-python; charset=utf-8"
    assert headers["ETag"] == f'"{hashlib.sha256(expected).hexdigest()}"'
    assert headers["Cache-Control"] == "public, max-age=300"
    assert headers["X-Content-Type-Options"] == "nosniff"
    again, _, body = fetch(stack.url + "/v1/client.py", {"If-None-Match": headers["ETag"]})
    assert again == 304 and body == b""
    # the published document says the same
    documented = json.loads(fetch(stack.url + "/openapi.json")[2])["paths"]["/v1/client.py"]["get"]
    ok = documented["responses"]["200"]
    assert "text/x-python" in ok["content"] and "304" in documented["responses"]
    assert re.fullmatch(ok["headers"]["ETag"]["schema"]["pattern"], headers["ETag"])
    assert ok["headers"]["Cache-Control"]["schema"]["const"] == headers["Cache-Control"]


def test_curl_the_client_and_run_it_with_no_install(stack, tmp_path):
    """The README recipe: `curl -fsS $JIT_URL/v1/client.py -o jit_client.py && python3 jit_client.py …`."""
    target = tmp_path / "jit_client.py"
    if shutil.which("curl"):
        subprocess.run(["curl", "-fsS", f"{stack.url}/v1/client.py", "-o", str(target)], check=True, timeout=30)
    else:
        target.write_bytes(fetch(stack.url + "/v1/client.py")[2])
    script = """
        VARS="$(python3 jit_client.py request quick --reason 'curl recipe' --ttl 30s --format env --quiet)" || exit 90
        eval "$VARS"
        test -n "$JIT_CREDENTIAL_USERNAME" || exit 91
        python3 jit_client.py release --quiet || exit 92
        printf '%s' "$JIT_REQUEST_ID" > rid.txt
    """
    env = {"PATH": os.environ["PATH"], "JIT_URL": stack.url, "JIT_TOKEN": WEB_TOKEN}
    before = known_ids(stack)
    proc = subprocess.Popen(
        ["sh", "-c", script], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        rid = newest_request(stack, before)
        stack.slack_post(
            block_action("jit_approve", rid, "U0LEAD1", channel="C0APPROVALS", message_ts=stack.message_ts(rid))
        )
        _, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert (tmp_path / "rid.txt").read_text() == rid
    assert stored_status(stack, rid) == "revoked"


# ------------------------------------------------------------------ pip install ./client, alone


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory) -> Path:
    """A fresh venv with `./client` installed and nothing else. Building it needs a build backend:
    a fresh venv's own setuptools cannot build a wheel without `wheel` (Python 3.11) or has none
    (3.12+), so pip's isolated build fetches setuptools from the index pip is configured with."""
    where = tmp_path_factory.mktemp("client-venv")
    venv = where / "v"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    source = shutil.copytree(ROOT / "client", where / "client")  # the build writes beside its source
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", str(source)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return venv


def test_jit_client_installs_alone_and_talks_to_a_real_server(client_venv, stack, tmp_path):
    bin_dir = client_venv / "bin"
    listed = subprocess.run(
        [str(bin_dir / "pip"), "list", "--format", "json"], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert {p["name"] for p in json.loads(listed)} - {"pip", "setuptools"} == {"jit-client"}
    server_code = subprocess.run([str(bin_dir / "python"), "-c", "import bot"], capture_output=True, cwd=tmp_path)
    assert server_code.returncode != 0  # the server's package is not in this venv

    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "JIT_URL": stack.url, "JIT_TOKEN": WEB_TOKEN}

    def jit_client(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(bin_dir / "jit-client"), *argv], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
        )

    helped = jit_client("--help")
    assert helped.returncode == 0 and "request" in helped.stdout and "release" in helped.stdout
    asked = jit_client("request", "read-secret", "--reason", "installed alone", "--no-wait", "--quiet")
    assert asked.returncode == 0, asked.stderr
    handle = json.loads(asked.stdout)
    released = jit_client("release", handle["id"], "--request-token", handle["request_token"], "--quiet")
    assert released.returncode == 0, released.stderr
    assert stored_status(stack, handle["id"]) == "cancelled"
