"""Hook throughput: `POST /v1/requests` under concurrent clients, and many pipelines long-polling
at once while approvals arrive (how long a status change takes to reach its waiter).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from bench.common import (
    CHANNEL,
    RssSampler,
    Sizes,
    auth,
    close_stack,
    new_stack,
    remember,
    signed_click,
    summary,
    wait_for,
)
from bench.http import Connection, Pool


async def _create_many(port: int, n: int, concurrency: int = 20) -> list[str]:
    pool = Pool("127.0.0.1", port, concurrency)

    async def one() -> str:
        while True:
            resp = await pool.request(
                "POST",
                "/v1/requests",
                headers=auth(),
                json_body={"action": "bench-token", "reason": "bench: long-poll"},
            )
            if resp.status != 503:
                break
            await asyncio.sleep(resp.retry_after_s)  # at capacity: back after Retry-After, as jit_client does
        if resp.status != 201:
            raise RuntimeError(f"create failed: {resp.status} {resp.body[:200]!r}")
        return remember(resp.json())["id"]

    ids = await asyncio.gather(*(one() for _ in range(n)))
    await pool.close()
    return list(ids)


async def _release_all(port: int, ids: list[str], concurrency: int = 20) -> None:
    """The pipeline is done with the long-poll phase's grants (a held grant is handed back to the
    same pipeline asking again: the throughput run must create new requests)."""
    pool = Pool("127.0.0.1", port, concurrency)

    async def release(rid: str) -> None:
        while True:
            resp = await pool.request("DELETE", f"/v1/requests/{rid}", headers=auth(rid))
            if resp.status != 503:
                return
            await asyncio.sleep(resp.retry_after_s)  # at capacity: back after Retry-After

    await asyncio.gather(*(release(rid) for rid in ids))
    await pool.close()


def _wait_messages(r, ids: list[str], timeout: float) -> dict[str, str]:
    from bot.store import keys

    def all_posted():
        pipe = r.pipeline(transaction=False)
        for rid in ids:
            pipe.hget(keys.request(rid), "message_ts")
        got = pipe.execute()
        return dict(zip(ids, got, strict=True)) if all(got) else None

    return wait_for(all_posted, timeout, 0.2, "every request's Slack message")


async def _waiters(port: int, r, ids: list[str], ts: dict[str, str], settle_s: float) -> dict[str, Any]:
    from bot.store import keys

    sent: dict[str, float] = {}
    got: dict[str, tuple[float, str, float]] = {}
    conns = {rid: Connection("127.0.0.1", port) for rid in ids}

    errors: dict[str, int] = {}

    async def wait_one(rid: str) -> None:
        try:
            resp = await conns[rid].request("GET", f"/v1/requests/{rid}?wait=60", headers=auth(rid))
        except (ConnectionError, OSError) as e:
            errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
            return
        if resp.status != 200:
            key = f"{resp.status} {resp.body[:80].decode(errors='replace')}"
            errors[key] = errors.get(key, 0) + 1
            return
        got[rid] = (time.perf_counter(), resp.json()["status"], time.time())

    tasks = [asyncio.create_task(wait_one(rid)) for rid in ids]
    await asyncio.sleep(settle_s)  # every long-poll connected and registered
    early = len(got)
    order = list(ids)
    random.Random(3).shuffle(order)
    clicks = Pool("127.0.0.1", port, 10)
    t_clicks = time.perf_counter()

    async def click(rid: str) -> None:
        body, headers = signed_click(rid, ts[rid])
        conn = await clicks._free.get()
        try:
            sent[rid] = time.perf_counter()
            resp = await conn.request("POST", "/slack/events", headers=headers, body=body)
        finally:
            clicks._free.put_nowait(conn)
        if resp.status != 200:
            raise RuntimeError(f"click refused: {resp.status}")

    await asyncio.gather(*(click(rid) for rid in order))
    click_s = time.perf_counter() - t_clicks
    done, pending = await asyncio.wait(tasks, timeout=70)
    for t in pending:
        t.cancel()
    await clicks.close()
    for c in conns.values():
        await c.close()
    lat = [(got[rid][0] - sent[rid]) * 1000 for rid in ids if rid in got and rid in sent]
    decided = r.pipeline(transaction=False)
    for rid in ids:
        decided.hget(keys.request(rid), "decided_ms")
    decided_ms = dict(zip(ids, decided.execute(), strict=True))
    from_transition = [got[rid][2] * 1000 - int(decided_ms[rid]) for rid in ids if rid in got and decided_ms[rid]]
    unchanged = sum(1 for rid in ids if rid in got and got[rid][1] == "pending")
    return {
        "waiters": len(ids),
        "returned_before_any_click": early,
        "approvals_per_s": round(len(ids) / click_s, 1),
        "click_to_waiter_ms": summary(lat, 1),
        "transition_to_waiter_ms": summary(from_transition, 1),
        "failed": sum(errors.values()),
        "failures": errors,
        "never_returned": len(ids) - len(got) - sum(errors.values()),
        "returned_still_pending": unchanged,
        "starved": (len(ids) - len(got)) + unchanged + sum(1 for x in lat if x > 5000 or x < 0),
    }


async def _throughput(port: int, clients: int, seconds: float) -> dict[str, Any]:
    lat: list[float] = []
    refused: list[float] = []
    codes: dict[int, int] = {}
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        conn = Connection("127.0.0.1", port)
        body = {
            # not the long-poll phase's action: a pipeline asking again for an action it holds an
            # active grant of gets that grant back (200), and one grant still active would turn
            # every create into a lookup
            "action": "bench-record",
            "reason": "bench: throughput",
            "context": {"repository": "org/app"},
        }
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            try:
                resp = await conn.request("POST", "/v1/requests", headers=auth(), json_body=body)
                status = resp.status
            except (ConnectionError, OSError):
                status = 0
            codes[status] = codes.get(status, 0) + 1
            if status == 201:
                lat.append((time.perf_counter() - t) * 1000)
            elif status == 503:  # at capacity: refused at once; back after Retry-After, as jit_client does
                refused.append((time.perf_counter() - t) * 1000)
                await asyncio.sleep(min(resp.retry_after_s, max(deadline - time.perf_counter(), 0)))
        await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - t0
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "created": codes.get(201, 0),
        "creates_per_s": round(codes.get(201, 0) / elapsed, 1),
        "latency_ms": summary(lat, 1),
        "status_codes": {str(k): v for k, v in sorted(codes.items())},
        "refused": codes.get(503, 0),
        "refused_ms": summary(refused, 1),
        "errors": sum(v for k, v in codes.items() if k not in (201, 503)),
    }


def _cpu_parts(r, serve: int, worker: int) -> dict[str, float]:
    """CPU seconds used so far by `jit serve`'s and `jit worker`'s process trees and by Redis."""
    from bench.common import process_tree
    from bench.mass_expiry import _cpu_s, _redis_cpu_s

    return {"serve": _cpu_s(process_tree(serve)), "worker": _cpu_s(process_tree(worker)), "redis": _redis_cpu_s(r)}


def _due_now(r) -> bool:
    """Due-queue work that is due now (timers set for later, like pending timeouts, do not count)."""
    from bot.store import keys

    return bool(r.zcount(keys.due(), "-inf", time.time() * 1000))


def _queues_drained(r) -> bool:
    return r.llen("rq:queue:jit-access") + r.llen("rq:queue:jit-slack") == 0


def _drained(r) -> bool:
    """The creates' follow-up work is done: no job queued, nothing due, and no first post waiting
    (the channel's poster is one long job while its outbox waits, leased: neither queued nor due)."""
    from bot.store import keys

    return _queues_drained(r) and not _due_now(r) and not r.exists(keys.channel_outbox(CHANNEL))


def _throughput_paced(sizes: Sizes, log=print) -> dict[str, Any]:
    """The same flood with the product's defaults: first posts paced at Slack's one a second per
    channel, so a flood into one channel becomes a digest and a queue of posts, not a post per
    create now (the run above posts every request at once, which Slack itself would refuse).
    CPU per create counts what the flood cost while it ran; the paced posts follow later."""
    log("  throughput run, Slack first posts paced (product defaults)")
    stack = new_stack()
    try:
        serve = stack.serve(workers=2)
        worker = stack.worker(concurrency=2)
        import redis as redislib

        from bot.store import keys

        r = redislib.Redis.from_url(stack.redis.url, decode_responses=True)
        cpu0 = _cpu_parts(r, serve.popen.pid, worker.popen.pid)
        through = asyncio.run(_throughput(stack.port, sizes.hook_clients, sizes.hook_seconds))
        cpu1 = _cpu_parts(r, serve.popen.pid, worker.popen.pid)
        per = {k: round((cpu1[k] - cpu0[k]) * 1000 / max(through["created"], 1), 2) for k in cpu0}
        through["cpu_ms_per_create"] = round(sum(per.values()), 2)
        through["cpu_ms_per_create_by_process"] = per
        through["first_posts_waiting_at_end"] = r.zcard(keys.channel_outbox(CHANNEL))
        return through
    finally:
        close_stack(stack)


def run(sizes: Sizes, log=print) -> dict[str, Any]:
    import redis as redislib

    from bot.store import keys

    log(
        f"hook: {sizes.waiters} long-polls while approvals happen; then {sizes.hook_clients} clients "
        f"creating requests for {sizes.hook_seconds:g}s"
    )
    stack = new_stack(JIT_SLACK_POST_INTERVAL_MS="0")  # one channel; the Slack stand-in does not limit here
    try:
        serve = stack.serve(workers=2)
        worker = stack.worker(concurrency=2)
        r = redislib.Redis.from_url(stack.redis.url, decode_responses=True)
        with RssSampler({"serve": serve.popen.pid, "worker": worker.popen.pid}) as rss:
            ids = asyncio.run(_create_many(stack.port, sizes.waiters))
            ts = _wait_messages(r, ids, 600)
            log(f"  {len(ids)} requests created and posted; long-polls open, approving")
            waiters = asyncio.run(_waiters(stack.port, r, ids, ts, 3.0 if sizes.waiters >= 500 else 1.0))
            asyncio.run(_release_all(stack.port, ids))  # else the pipeline's next asks get these grants back
            try:
                wait_for(lambda: _queues_drained(r), 120, 0.2, "the approvals' jobs to finish")
            except TimeoutError:
                log("  worker still busy with the approvals' jobs; measuring throughput anyway")
            log("  throughput run")
            audit_bytes0 = int(r.memory_usage(keys.audit_stream(), samples=0) or 0)
            audit_len0 = r.xlen(keys.audit_stream())
            cpu0 = _cpu_parts(r, serve.popen.pid, worker.popen.pid)
            through = asyncio.run(_throughput(stack.port, sizes.hook_clients, sizes.hook_seconds))
            audit_bytes1 = int(r.memory_usage(keys.audit_stream(), samples=0) or 0)
            audit_len1 = r.xlen(keys.audit_stream())
            through["slack_posts_still_queued_at_end"] = r.llen("rq:queue:jit-slack")
            try:  # the creates' follow-up work (their Slack posts) is part of what a create costs
                wait_for(lambda: _drained(r), 300, 0.5, "the creates' Slack posts")
            except TimeoutError:
                log("  worker still busy with the creates' follow-ups; CPU per create counts what was done")
            cpu1 = _cpu_parts(r, serve.popen.pid, worker.popen.pid)
            per = {k: round((cpu1[k] - cpu0[k]) * 1000 / max(through["created"], 1), 2) for k in cpu0}
            through["cpu_ms_per_create"] = round(sum(per.values()), 2)
            through["cpu_ms_per_create_by_process"] = per
        events = audit_len1 - audit_len0
        paced = _throughput_paced(sizes, log)
        return {
            "method": (
                "asyncio HTTP/1.1 keep-alive clients in the bench process against `jit serve` (gunicorn, 2 gevent "
                "workers) with `jit worker` (concurrency 2) running, JIT_RATE_LIMIT=0, all on the same machine. "
                "Long-polls: GET ?wait=60 per request, approvals sent as signed Slack clicks (10 at a time) in "
                "random order; starved = never returned, returned still pending, or > 5 s after its click. "
                "Slack first-post pacing off (JIT_SLACK_POST_INTERVAL_MS=0), as the stand-in does not rate-limit here."
            ),
            "long_poll": waiters,
            "throughput": through,
            "throughput_paced": paced,
            "audit_events": events,
            "redis_bytes_per_audit_event": round((audit_bytes1 - audit_bytes0) / events) if events else None,
            "memory": rss.result(),
        }
    finally:
        close_stack(stack)
