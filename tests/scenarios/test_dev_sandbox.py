"""`jit dev` without a Slack app: a local Slack sandbox to click in, a curl that works, a prompt and quiet stop."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import redis as redislib
import requests
from dev_support import JIT, Dev, clean_env, click, listening, request_waiting, sandbox_messages
from procs import wait_until
from support import ROOT, free_port


def printed_curl(output: str) -> str:
    """The `curl … POST /v1/requests` command of the banner, as a shell would read it."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("curl -s -X POST"))
    command = []
    for line in lines[start:]:
        command.append(line.strip())
        if not line.endswith("\\"):
            break
    return "\n".join(command)


def listen_addresses(port: int) -> set[str]:
    """The local addresses something on this machine listens on at `port`."""
    return {
        c.laddr.ip
        for c in psutil.net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }


def test_jit_dev_starts_a_local_slack_and_prints_a_curl_that_works(tmp_path):
    dev = Dev(tmp_path, "--example-policy")
    try:
        dev.wait_ready()
        sandbox = dev.sandbox_url()
        out = dev.output()
        assert "Slack:  a local sandbox — open " + sandbox in out
        assert "token:  .jit/pipeline-token (pipeline example-ci" in out  # where the token was written
        assert f"http://localhost:{dev.port}/slack/events" in out  # and how to use a real Slack app later
        assert "SLACK_BOT_TOKEN" in out
        assert "Traceback" not in out

        # the curl as printed, run by a shell in that folder, asks for an action the policy has
        run = subprocess.run(["bash", "-c", printed_curl(out)], cwd=tmp_path, capture_output=True, text=True)
        asked = json.loads(run.stdout)
        assert asked["status"] == "pending" and asked["action"] == "read-secret", run.stdout + run.stderr
        assert asked["requested_by"] == "carol@example.com"  # someone the policy knows

        # jit posted its approval message to the sandbox, as to Slack, and nowhere else
        wait_until(
            lambda: any(asked["id"] in json.dumps(m.get("blocks")) for m in sandbox_messages(sandbox)),
            timeout=60,
            message="the request's message in the sandbox",
        )
        port = int(sandbox.rsplit(":", 1)[1])
        assert listen_addresses(port) == {"127.0.0.1"}  # the page is on this machine only

        # the one-step client line, as printed, waits for two approvers clicking in the sandbox
        line = next(x.strip() for x in out.splitlines() if x.strip().startswith("JIT_URL="))
        env = clean_env(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        client = subprocess.Popen(["bash", "-c", line], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True)
        try:
            rid = wait_until(lambda: request_waiting(sandbox, exclude=asked["id"]), timeout=60, message="its request")
            for approver in ("U0ALICE", "U0BOB"):
                click(sandbox, approver, rid, "Approve")
            printed, _ = client.communicate(timeout=60)
        finally:
            client.kill()
        assert client.returncode == 0, printed
        assert json.loads(printed)["credential"]["token"]
        assert "Traceback" not in dev.output()

        assert dev.stop(signal.SIGINT) == 0, dev.output()
        assert not listening(port)
    finally:
        dev.kill()


def test_jit_serve_never_starts_the_sandbox(tmp_path, redis_url):
    """Only `jit dev` does: `jit serve` without Slack settings stops with one line; with them, it
    listens on its own port and nothing else."""
    bare = subprocess.run(
        [*JIT, "serve", "--port", str(free_port())],
        cwd=tmp_path,
        env=clean_env(REDIS_URL=redis_url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bare.returncode == 2
    assert sorted(bare.stderr.strip().splitlines()) == [
        "jit: setting JIT_SECRET_KEY is required but not set: "
        "at least 32 random characters: `openssl rand -hex 32` (`jit init` writes one into .env)",
        "jit: setting SLACK_BOT_TOKEN is required but not set: "
        "the Bot User OAuth Token (xoxb-…) from your Slack app's OAuth & Permissions page",
        "jit: setting SLACK_SIGNING_SECRET is required but not set: "
        "the Signing Secret from your Slack app's Basic Information page",
    ]

    port = free_port()
    starter = (ROOT / "bot" / "example-policy.yaml").read_text()
    (tmp_path / "jit-policy.yaml").write_text(starter.replace("__PIPELINE_TOKEN_SHA256__", "a" * 64))
    env = clean_env(
        REDIS_URL=redis_url,
        SLACK_BOT_TOKEN="xoxb-real-looking",
        SLACK_SIGNING_SECRET="a-signing-secret",
        SLACK_API_URL="http://127.0.0.1:9/api/",  # nothing there: no request may leave this machine
        JIT_SECRET_KEY="k" * 40,
    )
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        serve = subprocess.Popen(
            [*JIT, "serve", "--port", str(port), "--workers", "1"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: listening(port) or serve.poll() is not None, timeout=60, message="jit serve to listen")
        assert serve.poll() is None, log.read_text()
        tree = [psutil.Process(serve.pid), *psutil.Process(serve.pid).children(recursive=True)]
        ports = {c.laddr.port for p in tree for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        assert ports == {port}
        assert not listening(port + 1)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(60)


def test_ctrl_c_answers_open_long_polls_and_stops_at_once(tmp_path):
    dev = Dev(tmp_path)
    try:
        dev.wait_ready()
        out = dev.wait_banner()
        redis_url = re.search(r"(redis://127\.0\.0\.1:\d+/0) \(embedded", out).group(1)
        asked = requests.post(
            dev.url + "/v1/requests",
            json={"action": "read-secret", "reason": "waiting"},
            headers={"Authorization": f"Bearer {dev.pipeline_token()}"},
            timeout=10,
        ).json()
        polled: dict = {}

        def long_poll() -> None:
            r = requests.get(
                f"{dev.url}/v1/requests/{asked['id']}?wait=60",
                headers={"Authorization": f"Bearer {asked['request_token']}"},
                timeout=90,
            )
            polled["status"], polled["body"] = r.status_code, r.json()

        poll = threading.Thread(target=long_poll)
        poll.start()
        watcher = redislib.Redis.from_url(redis_url)
        wait_until(lambda: watcher.zcard("jit:longpolls:pipeline:example-ci") >= 1, timeout=30, message="the long-poll")

        started = time.monotonic()
        assert dev.stop(signal.SIGINT, timeout=90) == 0, dev.output()
        stopped_after = time.monotonic() - started
        poll.join(30)
        # the long-poll was answered (with the status it had), not cut off and not waited out
        assert polled == {"status": 200, "body": polled["body"]} and polled["body"]["status"] == "pending"
        assert stopped_after < 45, f"stopping took {stopped_after:.0f} s: the 60 s long-poll was waited out"
        out = dev.output()
        assert "jit dev: stopping — the server answers its 1 open long-poll now" in out
        assert "jit dev: stopped" in out
        assert "Traceback" not in out
    finally:
        dev.kill()


def test_no_sandbox_without_slack_settings_is_one_quiet_line(tmp_path):
    dev = Dev(tmp_path, "--no-sandbox")
    try:
        dev.wait_ready()
        out = dev.wait_banner()
        slack_lines = [line for line in out.splitlines() if line.strip().startswith("Slack:")]
        assert slack_lines == [
            "  Slack:  off (--no-sandbox, and no SLACK_BOT_TOKEN / SLACK_SIGNING_SECRET): messages go nowhere"
        ]
        redis_url = re.search(r"(redis://127\.0\.0\.1:\d+/0) \(embedded", out).group(1)
        asked = requests.post(
            dev.url + "/v1/requests",
            json={"action": "read-secret", "reason": "no slack"},
            headers={"Authorization": f"Bearer {dev.pipeline_token()}"},
            timeout=10,
        ).json()
        r = redislib.Redis.from_url(redis_url, decode_responses=True)
        # the worker is done with the request's message (it went nowhere), not retrying it
        wait_until(lambda: r.hget(f"jit:req:{asked['id']}", "message_ts"), timeout=60, message="the message job")
        assert not requests.get(f"http://127.0.0.1:{dev.port + 1}/", timeout=10).ok  # no page to open
        assert dev.stop(signal.SIGINT) == 0
        out = dev.output()
        for noise in ("Traceback", "slack.com", "Failed to send a request to Slack", "failed (attempt", "URLError"):
            assert noise not in out, out
    finally:
        dev.kill()


def test_one_slack_setting_without_the_other_is_a_one_line_error(tmp_path):
    run = subprocess.run(
        [*JIT, "dev"],
        cwd=tmp_path,
        env=clean_env(SLACK_BOT_TOKEN="xoxb-mine"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "jit dev: setting SLACK_SIGNING_SECRET is not set but SLACK_BOT_TOKEN is: set both to use your Slack app, "
        "or neither for the local Slack sandbox"
    ]


def test_the_repository_ignores_what_jit_dev_writes():
    if subprocess.run(["git", "rev-parse"], cwd=ROOT, capture_output=True).returncode != 0:
        pytest.skip("not a git checkout")
    for path in ("jit-policy.yaml", ".jit/secret-key", ".jit/pipeline-token", "docs/jit-policy.yaml"):
        check = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert check.returncode == 0, f"{path} is not ignored"
    assert subprocess.run(["git", "check-ignore", "-q", "bot/example-policy.yaml"], cwd=ROOT).returncode == 1
