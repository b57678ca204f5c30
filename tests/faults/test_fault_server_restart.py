"""Fault 7: `jit serve` is killed and started again while pipelines wait. The client's retries (the
same request id for the long-poll, the same Idempotency-Key for the create) pick up the same request:
nothing is asked twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import requests
from faultkit import approve, audit, audit_verifies, rdb, request_posts
from procs import Stack, wait_until
from support import WEB_TOKEN

ROOT = Path(__file__).resolve().parents[2]


def client(stack: Stack, action: str, key: str, *extra: str) -> subprocess.Popen:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("JIT_", "GITHUB_", "GITLAB_", "CI", "SLACK_", "REDIS_"))
    }
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bot.cli",
            "request",
            action,
            "--reason",
            "fault 7",
            "--url",
            stack.url,
            "--token",
            WEB_TOKEN,
            "--idempotency-key",
            key,
            "--format",
            "json",
            "--timeout",
            "2m",
            *extra,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_server_restart_while_pipelines_wait_asks_nothing_twice():
    with Stack() as stack:
        server = stack.serve()
        stack.worker()

        # Pipeline A is long-polling when the server dies.
        waiting = client(stack, "deploy-prod", "fault-7-long-poll")
        wait_until(lambda: rdb(stack).zcard("jit:idx:all") == 1, 30, 0.1, "A's request created")
        [a] = rdb(stack).zrange("jit:idx:all", 0, -1)
        stack.message_ts(a)
        # Pipeline B's create reached the server, but the answer never reached B (the server died).
        lost = requests.post(
            stack.url + "/v1/requests",
            json={"action": "read-secret", "reason": "fault 7"},
            headers={"Authorization": f"Bearer {WEB_TOKEN}", "Idempotency-Key": "fault-7-create"},
            timeout=10,
        )
        assert lost.status_code == 201
        b = lost.json()["id"]
        stack.message_ts(b)

        server.kill()
        assert waiting.poll() is None, "the client must keep retrying, not give up"
        stack.serve(port=stack.port)  # same address, new process

        # B retries its create with the same key: the same request comes back, not a new one.
        retried = client(stack, "read-secret", "fault-7-create", "--no-wait")
        out, err = retried.communicate(timeout=60)
        assert retried.returncode == 0, err
        assert json.loads(out)["id"] == b
        assert "found again" in err

        # A's long-poll resumes on the new server and sees the approvals given there.
        approve(stack, a, "U0LEAD1")
        approve(stack, a, "U0LEAD2")
        out, err = waiting.communicate(timeout=90)
        assert waiting.returncode == 0, err
        assert json.loads(out)["id"] == a
        assert "retrying" in err  # it did lose the server on the way

        assert sorted(rdb(stack).zrange("jit:idx:all", 0, -1)) == sorted([a, b])
        for rid in (a, b):
            assert len(audit(stack, "request.created", rid)) == 1
            assert len(request_posts(stack, rid)) == 1
        assert len(audit(stack, "request.created")) == 2
        audit_verifies(stack)
