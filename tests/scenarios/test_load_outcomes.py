"""500 requests at once through real processes (not timed: outcomes only).

Each is asked over HTTP, approved with a signed Slack click, granted by the `exec` backend,
and expires two seconds later. Afterwards: every request is final, every grant was revoked
exactly once, the audit chain verifies, and Redis holds no orphaned key.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import redis as redislib
import requests
from fakes.slack import block_action, sign
from procs import Stack, wait_until
from redis_state import orphans
from support import BOT_TOKEN, ROOT, SECRET_KEY, SIGNING_SECRET, WEB_TOKEN

from bot.store import keys

N = 500
AT_ONCE = 50
#: Due-queue kinds that change a request or its message (the rest are courtesy notes).
WORK = {"grant", "expire", "revoke", "timeout", "slack", "post", "updates"}


def test_500_concurrent_requests_all_end_revoked_once_and_leave_nothing_behind():
    env = {
        "JIT_RATE_LIMIT": "0",  # one pipeline asks 500 times in a burst
        "JIT_SLACK_POST_INTERVAL_MS": "0",  # Slack's 1 post/s per channel is paced elsewhere; not timed here
        "JIT_SLACK_UPDATE_INTERVAL_MS": "0",  # so is chat.update's Tier 3 (tests/unit/workers/test_expiry_updates.py)
    }
    with Stack(extra_env=env) as stack:
        stack.serve(workers=2)
        stack.worker(concurrency=2)
        r = redislib.Redis.from_url(stack.redis.url, decode_responses=True)
        session = requests.Session()
        session.mount("http://", requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=AT_ONCE))

        def ask(i: int) -> tuple[str, str]:
            resp = None
            for _ in range(20):  # a refused connection under load is retried; the key keeps it one request
                try:
                    resp = session.post(
                        f"{stack.url}/v1/requests",
                        timeout=30,
                        json={"action": "quick", "reason": f"load {i}", "ttl": "2s"},
                        headers={"Authorization": f"Bearer {WEB_TOKEN}", "Idempotency-Key": f"load-{i}"},
                    )
                except requests.ConnectionError:
                    time.sleep(0.5)
                    continue
                if resp.status_code != 503:
                    break
                time.sleep(float(resp.headers["Retry-After"]))  # at capacity: back later, as jit_client does
            assert resp is not None and resp.status_code in (200, 201), resp and resp.text
            return resp.json()["id"], resp.json()["request_token"]

        def approve(rid: str, ts: str) -> None:
            body, ctype = block_action("jit_approve", rid, "U0LEAD1", channel="C0APPROVALS", message_ts=ts)
            click = session.post(
                f"{stack.url}/slack/events",
                data=body,
                timeout=30,
                headers=sign(SIGNING_SECRET, body, content_type=ctype),
            )
            assert click.status_code == 200, click.text

        t0 = time.monotonic()
        with ThreadPoolExecutor(AT_ONCE) as pool:
            results = list(pool.map(ask, range(N)))
            rids = [rid for rid, _ in results]
            assert len(set(rids)) == N
            # an approver clicks each message as soon as it is in the channel
            waiting, clicks = set(rids), []
            deadline = time.monotonic() + 240
            while waiting:
                assert time.monotonic() < deadline, f"{len(waiting)} requests never got a Slack message"
                order = sorted(waiting)
                with r.pipeline(transaction=False) as p:
                    for rid in order:
                        p.hget(keys.request(rid), "message_ts")
                    posted = [(rid, ts) for rid, ts in zip(order, p.execute(), strict=True) if ts]
                clicks += [pool.submit(approve, rid, ts) for rid, ts in posted]
                waiting -= {rid for rid, _ in posted}
                time.sleep(0.2)
            for c in clicks:
                c.result()
        print(f"asked and approved in {time.monotonic() - t0:.1f}s")

        # every request reaches a final state: here, all expire after their 2 s
        def statuses() -> Counter:
            with r.pipeline(transaction=False) as p:
                for rid in rids:
                    p.hget(keys.request(rid), "status")
                return Counter(p.execute())

        wait_until(
            lambda: statuses()["expired"] == N,
            timeout=240,
            interval=0.5,
            message=f"all {N} requests expired (now {dict(statuses())})",
        )

        print(f"all expired after {time.monotonic() - t0:.1f}s")
        # every grant issued once and revoked exactly once, with the credential it issued
        state: Path = stack.state_dir
        for rid in rids:
            grants = (state / f"{rid}.grant").read_text().splitlines()
            wait_until(lambda rid=rid: (state / f"{rid}.revoke").exists(), timeout=30, message=f"revoke of {rid}")
            revokes = (state / f"{rid}.revoke").read_text().splitlines()
            assert len(grants) == 1 and len(revokes) == 1, (rid, len(grants), len(revokes))
            assert json.loads(revokes[0])["request"]["credential"]["password"].startswith(f"pw-{rid}")

        # the follow-up work drains: no due item, no queued job, every message shows the end
        # the follow-up work drains: nothing left to grant, revoke, expire, time out or post
        def work_left() -> list[str]:
            return [m for m in r.zrange(keys.due(), 0, -1) if m.split(":", 1)[0] in WORK]

        wait_until(
            lambda: not work_left() and not any(r.llen(q) for q in r.scan_iter("rq:queue:*")),
            timeout=120,
            interval=0.5,
            message="the due queue and RQ queues to drain",
        )
        # what may stay queued: courtesy notes (reminders, DMs) that do nothing once a request is final
        for member in r.zrange(keys.due(), 0, -1):
            assert r.hget(keys.request(member.split(":", 1)[1]), "status") == "expired", member
        wait_until(
            lambda: all("Expired" in json.dumps(m["blocks"]) for m in _request_messages(stack, r, rids)),
            timeout=120,
            interval=0.5,
            message="every Slack message to show Expired",
        )
        assert all(not any(b["type"] == "actions" for b in m["blocks"]) for m in _request_messages(stack, r, rids))

        # the audit: one issue and one revocation per request, and the chain verifies
        events = Counter()
        per_request: dict[str, Counter] = {}
        for _, fields in r.xrange(keys.audit_stream()):
            body = json.loads(fields["data"])
            events[body["event"]] += 1
            if body.get("request_id") in per_request or body.get("request_id") in set(rids):
                per_request.setdefault(body["request_id"], Counter())[body["event"]] += 1
        for rid in rids:
            assert per_request[rid]["grant.issued"] == 1 and per_request[rid]["grant.revoked"] == 1, per_request[rid]
        verify = subprocess.run(
            [sys.executable, "-m", "bot.cli", "audit", "verify"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**stack.env},
            timeout=120,
        )
        assert verify.returncode == 0 and "audit chain ok" in verify.stdout, verify.stdout + verify.stderr

        # nothing orphaned: every jit key has a TTL or hangs off an index
        assert orphans(r) == []
        leftover = [k for k in r.scan_iter("rq:job:*") if r.ttl(k) == -1]
        assert leftover == [], leftover[:5]

        # and no secret reached the real processes' logs
        logs = "\n".join(p.log() for p in stack.procs)
        for secret in (SIGNING_SECRET, BOT_TOKEN, SECRET_KEY, WEB_TOKEN, *(t for _, t in results)):
            assert secret not in logs
        assert all(p.alive for p in stack.procs), logs[-3000:]


def _request_messages(stack: Stack, r, rids: list[str]) -> list[dict]:
    messages = stack.slack.messages("C0APPROVALS")
    return [messages[r.hget(keys.request(rid), "message_ts")] for rid in rids]


def test_the_orphan_check_finds_what_it_should(rt):
    """The check above can fail: plant each kind of leftover and see it reported."""
    r = rt.redis
    assert orphans(r) == []
    r.hset(keys.request("open1"), mapping={"status": "pending"})
    r.zadd(keys.open_requests(), {"open1": 1})
    r.hset(keys.approvals("open1"), "U1", 1)
    r.hset(keys.request("done1"), mapping={"status": "expired"})
    r.expire(keys.request("done1"), 60)
    r.set(keys.replay("v0=abc"), "1", ex=60)
    assert orphans(r) == []  # open, or bounded by a TTL: fine

    r.hset(keys.request("lost1"), mapping={"status": "expired"})  # final, no TTL, in no index
    r.set(keys.credential("lost2"), "blob")  # a credential without its TTL
    r.set(keys.replay("v0=def"), "1")  # a TTL-bound key that lost its TTL
    r.set("jit:mystery", "1")  # named nowhere in keys.py
    r.zadd(keys.open_requests(), {"ghost": 1})  # an index entry pointing at nothing
    r.hset(keys.due_attempts(), "revoke:gone", 3)  # a retry counter for nothing due
    r.zadd(keys.due(), {"revoke:gone2": 1})  # due work for a request that does not exist
    found = "\n".join(orphans(r))
    for needle in (
        "jit:req:lost1:",
        "jit:cred:lost2:",
        "jit:slack:seen:v0=def:",
        "jit:mystery:",
        "lists ghost",
        "counts revoke:gone,",
        "holds revoke:gone2",
    ):
        assert needle in found, (needle, found)
    assert "open1" not in found and "done1" not in found
