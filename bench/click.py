"""Click → credential: a signed Approve click until the waiting pipeline holds its credential.

Per request (sequential, one at a time): the pipeline creates a request and its Slack message
is posted (not timed); the pipeline starts long-polling `GET /v1/requests/{id}?wait=30` the way
`jit request` does (it polls again while the status is `approved`); the clock starts when the
signed click is sent to `/slack/events` and stops when `GET …/credential` has returned the
credential (`token` backend). Baseline in the same run: pipelines that poll every 5 s instead.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from bench.common import (
    RssSampler,
    Sizes,
    auth,
    close_stack,
    new_stack,
    remember,
    signed_click,
    summary,
)
from bench.http import Connection

FINAL_OR_ACTIVE = {"active", "denied", "expired", "revoked", "timed_out", "cancelled", "failed"}


async def _create(conn: Connection, action: str = "bench-token") -> dict[str, Any]:
    for _ in range(30):
        resp = await conn.request(
            "POST",
            "/v1/requests",
            headers=auth(),
            json_body={"action": action, "reason": "bench: click to credential"},
        )
        if resp.status != 503:
            break
        # the baseline's pipelines all ask at once: a server at its in-flight bound says when to
        # come back, and a pipeline does (as jit_client does)
        await asyncio.sleep(resp.retry_after_s)
    if resp.status != 201:
        raise RuntimeError(f"create failed: {resp.status} {resp.body[:200]!r}")
    return remember(resp.json())


async def _release(conn: Connection, rid: str) -> None:
    """Done with the credential, as a pipeline is (after the measurement): the pipeline's next ask
    is a new request, not the grant it still holds."""
    resp = await conn.request("DELETE", f"/v1/requests/{rid}", headers=auth(rid))
    if resp.status != 200:
        raise RuntimeError(f"release failed: {resp.status} {resp.body[:200]!r}")


async def _message_ts(r, rid: str, timeout: float = 30.0) -> str:
    from bot.store import keys

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ts = r.hget(keys.request(rid), "message_ts")
        if ts:
            return ts
        await asyncio.sleep(0.003)
    raise TimeoutError(f"no Slack message for {rid}")


async def _long_poll_until_active(conn: Connection, rid: str) -> tuple[float, float, str]:
    """As `jit request` waits: long-poll until a final/active status, then fetch the credential."""
    while True:
        resp = await conn.request("GET", f"/v1/requests/{rid}?wait=30", headers=auth(rid))
        status = resp.json()["status"]
        if status in FINAL_OR_ACTIVE:
            break
    t_active = time.perf_counter()
    cred = await conn.request("GET", f"/v1/requests/{rid}/credential", headers=auth(rid))
    if cred.status != 200 or "token" not in cred.json()["credential"]:
        raise RuntimeError(f"no credential for {rid}: {cred.status} {cred.body[:200]!r}")
    return t_active, time.perf_counter(), status


async def _poll_every(conn: Connection, rid: str, interval: float, phase: float) -> tuple[float, int]:
    """A pipeline that checks the status every `interval` seconds (no long-poll)."""
    await asyncio.sleep(phase)
    polls = 0
    while True:
        started = time.perf_counter()
        resp = await conn.request("GET", f"/v1/requests/{rid}", headers=auth(rid))
        polls += 1
        if resp.json()["status"] in FINAL_OR_ACTIVE:
            break
        await asyncio.sleep(max(0.0, interval - (time.perf_counter() - started)))
    cred = await conn.request("GET", f"/v1/requests/{rid}/credential", headers=auth(rid))
    if cred.status != 200:
        raise RuntimeError(f"no credential for {rid}: {cred.status}")
    return time.perf_counter(), polls


async def _long_poll_run(stack, r, n: int, log) -> dict[str, Any]:
    from bot.store import keys

    create, poll, click = (Connection("127.0.0.1", stack.port) for _ in range(3))
    total, ack, seen, fetch = [], [], [], []
    to_approved, to_grant_start, grant_to_seen = [], [], []
    for i in range(n):
        created = await _create(create)
        rid = created["id"]
        ts = await _message_ts(r, rid)
        waiter = asyncio.create_task(_long_poll_until_active(poll, rid))
        await asyncio.sleep(0.02)  # let the long-poll reach the server and register
        body, headers = signed_click(rid, ts)
        t0_wall = time.time()
        t0 = time.perf_counter()
        resp = await click.request("POST", "/slack/events", headers=headers, body=body)
        t_ack = time.perf_counter()
        if resp.status != 200:
            raise RuntimeError(f"click refused: {resp.status} {resp.body[:200]!r}")
        t_active, t_cred, status = await asyncio.wait_for(waiter, 60)
        if status != "active":
            raise RuntimeError(f"{rid} ended {status}")
        h = r.hmget(keys.request(rid), "decided_ms", "issued_ms")
        total.append((t_cred - t0) * 1000)
        ack.append((t_ack - t0) * 1000)
        seen.append((t_active - t0) * 1000)
        fetch.append((t_cred - t_active) * 1000)
        to_approved.append(int(h[0]) - t0_wall * 1000)
        to_grant_start.append(int(h[1]) - int(h[0]))
        grant_to_seen.append(t0_wall * 1000 + (t_active - t0) * 1000 - int(h[1]))
        await _release(create, rid)
        if (i + 1) % 100 == 0:
            log(f"  {i + 1}/{n} clicks")
    for c in (create, poll, click):
        await c.close()
    return {
        "total": total,
        "ack": ack,
        "seen": seen,
        "fetch": fetch,
        "to_approved": to_approved,
        "to_grant_start": to_grant_start,
        "grant_to_seen": grant_to_seen,
    }


async def _poll_run(stack, r, n: int, interval: float, rng: random.Random) -> list[dict[str, float]]:
    # Every pipeline has asked before any approver clicks: the bench's pipelines share one pipeline
    # token, and one asking after another's grant is active would get that grant back (overlap).
    conns = [Connection("127.0.0.1", stack.port) for _ in range(n)]
    created = await asyncio.gather(*(_create(c) for c in conns))

    async def one(conn: Connection, rid: str) -> dict[str, float]:
        ts = await _message_ts(r, rid)
        poller = asyncio.create_task(_poll_every(conn, rid, interval, rng.uniform(0, interval)))
        await asyncio.sleep(rng.uniform(0, interval))  # the approver clicks at a random moment
        clicker = Connection("127.0.0.1", stack.port)
        body, headers = signed_click(rid, ts)
        t0 = time.perf_counter()
        await clicker.request("POST", "/slack/events", headers=headers, body=body)
        t_cred, polls = await asyncio.wait_for(poller, 60)
        await _release(conn, rid)
        await conn.close()
        await clicker.close()
        return {"ms": (t_cred - t0) * 1000, "polls": polls}

    return await asyncio.gather(*(one(c, made["id"]) for c, made in zip(conns, created, strict=True)))


def run(sizes: Sizes, log=print) -> dict[str, Any]:
    log(
        f"click → credential: {sizes.clicks} requests one at a time, then {sizes.poll_subset} "
        f"pipelines polling every {sizes.poll_interval_s:g}s"
    )
    stack = new_stack(JIT_SLACK_POST_INTERVAL_MS="0")  # one channel; the Slack stand-in does not limit here
    try:
        serve = stack.serve(workers=2)
        worker = stack.worker(concurrency=2)
        import redis as redislib

        r = redislib.Redis.from_url(stack.redis.url, decode_responses=True)
        rng = random.Random(11)
        with RssSampler({"serve": serve.popen.pid, "worker": worker.popen.pid}) as rss:
            asyncio.run(_long_poll_run(stack, r, min(5, sizes.clicks), lambda m: None))  # warm-up
            lp = asyncio.run(_long_poll_run(stack, r, sizes.clicks, log))
            polled = asyncio.run(_poll_run(stack, r, sizes.poll_subset, sizes.poll_interval_s, rng))
        # The same click-to-active times, seen by a pipeline polling every P seconds from a random
        # phase: it notices at its next poll, U(0, P) later, then fetches the credential.
        analytic = [
            s + rng.uniform(0, sizes.poll_interval_s) * 1000 + f for s, f in zip(lp["seen"], lp["fetch"], strict=True)
        ]
        return {
            "method": (
                "sequential: create request, wait for its Slack message, start the pipeline's long-poll, "
                "then time from sending the signed Approve click to the credential response. Baseline: "
                f"{sizes.poll_subset} pipelines really polling GET /v1/requests/{{id}} every "
                f"{sizes.poll_interval_s:g}s from a random phase (run concurrently, clicks at random moments); "
                "plus the long-poll samples' own click-to-active times shifted by a uniform random poll "
                "phase (analytic). Slack first-post pacing off (JIT_SLACK_POST_INTERVAL_MS=0): every request "
                "uses one channel and the Slack stand-in does not rate-limit in this section (section 4 does)."
            ),
            "long_poll_ms": summary(lp["total"], 1),
            "click_ack_ms": summary(lp["ack"], 1),
            "stages_ms": {
                "click_to_approved": summary(lp["to_approved"], 1),
                "approved_to_grant_job": summary(lp["to_grant_start"], 1),
                "grant_job_to_pipeline_sees_active": summary(lp["grant_to_seen"], 1),
                "credential_fetch": summary(lp["fetch"], 1),
            },
            "poll_5s_measured_ms": summary([p["ms"] for p in polled], 0),
            "poll_5s_analytic_ms": summary(analytic, 0),
            "poll_interval_s": sizes.poll_interval_s,
            "memory": rss.result(),
        }
    finally:
        close_stack(stack)
