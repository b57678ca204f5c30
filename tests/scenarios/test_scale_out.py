"""Scale-out: two `jit serve` replicas and two `jit worker`s on one Redis behave like one; Sentinel URLs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading

import pytest
import redis as redislib
import requests
from fakes.slack import block_action, sign
from procs import JIT, Proc, Stack, wait_until
from redis_state import stored_approvals
from support import SIGNING_SECRET, WEB_TOKEN, free_port

from bot.store.sentinel import SentinelTarget, parse


def serve_replica(stack: Stack, port: int | None = None) -> tuple[Proc, str]:
    """Another `jit serve` on its own port, sharing the stack's Redis, Slack and policy."""
    port = port or free_port()
    proc = Proc("serve-b", [*JIT, "serve", "--port", str(port), "--workers", "1"], stack.env, stack.tmp)
    stack.procs.append(proc)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.alive, proc.log()
        try:
            return requests.get(url + "/readyz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    wait_until(ready, timeout=30, interval=0.1, message="the second replica to be ready")
    return proc, url


def test_two_replicas_and_two_workers_act_as_one():
    with Stack() as stack:
        stack.serve()
        _, url_b = serve_replica(stack)
        stack.worker(concurrency=1)
        stack.worker(concurrency=1)

        r = stack.ask("quick", WEB_TOKEN, ttl="3s", reason="scale-out")  # replica A
        assert r.status_code == 201, r.text
        rid, rtok = r.json()["id"], r.json()["request_token"]
        ts = stack.message_ts(rid)

        polled: dict = {}

        def long_poll_on_b():
            resp = requests.get(
                f"{url_b}/v1/requests/{rid}?wait=40",
                headers={"Authorization": f"Bearer {rtok}"},
                timeout=60,
            )
            polled["status"], polled["body"] = resp.status_code, resp.json()

        t = threading.Thread(target=long_poll_on_b)
        t.start()
        watcher = redislib.Redis.from_url(stack.redis.url)
        wait_until(
            lambda: watcher.pubsub_numsub("jit:changed")[0][1] >= 1,
            timeout=30,
            message="replica B's long-poll to be waiting",
        )

        # the click reaches replica A; Slack retries the very same delivery to replica B
        body, ctype = block_action("jit_approve", rid, "U0LEAD1", channel="C0APPROVALS", message_ts=ts)
        headers = sign(SIGNING_SECRET, body, content_type=ctype)
        assert requests.post(stack.url + "/slack/events", data=body, headers=headers, timeout=10).status_code == 200
        assert requests.post(url_b + "/slack/events", data=body, headers=headers, timeout=10).status_code == 401

        t.join(60)
        assert polled.get("status") == 200, polled
        # woken by the approval on the other replica, not by its 40 s running out
        assert polled["body"]["status"] in ("approved", "active"), polled

        final = stack.wait_status(rid, rtok, {"expired"}, timeout=60)
        assert final["status"] == "expired"
        grants = (stack.state_dir / f"{rid}.grant").read_text().splitlines()
        revokes = (stack.state_dir / f"{rid}.revoke").read_text().splitlines()
        assert (len(grants), len(revokes)) == (1, 1)
        posts = [
            c
            for c in stack.slack.calls("chat.postMessage")
            if c.ok and not c.params.get("thread_ts") and rid in json.dumps(c.params)
        ]
        assert len(posts) == 1  # one approval message, updated in place
        assert list(stored_approvals(watcher, rid)) == ["U0LEAD1"]


# ---------------------------------------------------------------------- Sentinel


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "redis+sentinel://sentinel-a/mymaster",
            SentinelTarget([("sentinel-a", 26379)], "mymaster", 0, None, None, None),
        ),
        (
            "redis+sentinel://:s3cr%40t@10.0.0.1:26380,10.0.0.2:26381/jit/2",
            SentinelTarget([("10.0.0.1", 26380), ("10.0.0.2", 26381)], "jit", 2, None, "s3cr@t", None),
        ),
        (
            "redis+sentinel://jit:pw@a:1,b:2,c/main/0?sentinel_password=spw",
            SentinelTarget([("a", 1), ("b", 2), ("c", 26379)], "main", 0, "jit", "pw", "spw"),
        ),
    ],
)
def test_sentinel_urls_parse(url, expected):
    assert parse(url) == expected


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis+sentinel://host:26379", "master name"),
        ("redis+sentinel://host:port/mymaster", "bad port"),
        ("redis+sentinel://host/mymaster/zero", "database must be a number"),
        ("redis+sentinel://:26379/mymaster", "empty Sentinel host"),
        ("redis://host/0", "starts with redis"),
    ],
)
def test_bad_sentinel_urls_say_what_is_wrong(url, complaint):
    with pytest.raises(ValueError, match=complaint):
        parse(url)


@pytest.fixture
def sentinel(redis_server):
    """A real Sentinel (redis-server in sentinel mode) watching the test Redis as `jitmaster`."""
    binary = shutil.which("redis-server")
    tmp = tempfile.mkdtemp(prefix="jit-sentinel-")
    port = free_port()
    conf = os.path.join(tmp, "sentinel.conf")
    with open(conf, "w") as f:
        f.write(f"port {port}\nbind 127.0.0.1\ndir {tmp}\nsentinel monitor jitmaster 127.0.0.1 {redis_server.port} 1\n")
    proc = subprocess.Popen([binary, conf, "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redislib.Redis(port=port, decode_responses=True)

    def knows_master() -> bool:
        try:
            return client.sentinel_get_master_addr_by_name("jitmaster") is not None
        except redislib.RedisError:
            return False

    try:
        wait_until(knows_master, timeout=20, message="sentinel to know the master")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def test_redis_url_through_sentinel_reaches_the_master(sentinel, redis_url):
    from bot.store.connection import redis_from_url

    via_sentinel = redis_from_url(f"redis+sentinel://127.0.0.1:{sentinel}/jitmaster/0", decode_responses=True)
    via_sentinel.set("jit:test:sentinel", "hello")
    direct = redislib.Redis.from_url(redis_url, decode_responses=True)
    assert direct.get("jit:test:sentinel") == "hello"
    # the settings accept it, so `jit serve` and `jit worker` start with it
    from bot.settings import Settings

    s = Settings(
        REDIS_URL=f"redis+sentinel://127.0.0.1:{sentinel}/jitmaster/0",
        SLACK_BOT_TOKEN="x",
        SLACK_SIGNING_SECRET="y",
        JIT_SECRET_KEY="k" * 32,
    )
    assert s.redis_url.startswith("redis+sentinel://")
