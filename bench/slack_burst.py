"""Slack burst: many requests for one channel in one second, against a Slack that allows about
one message per second per channel (the stand-in's `enforce_channel_rate`: 429 + Retry-After).
How long until every request's message is visible, how many 429s, and no duplicate messages.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from bench.common import BURST_CHANNEL, RssSampler, Sizes, auth, close_stack, new_stack, remember
from bench.http import Pool


async def _burst(port: int, n: int, window_s: float) -> tuple[list[str], float, float]:
    pool = Pool("127.0.0.1", port, min(n, 20))
    start = time.perf_counter() + 0.05

    async def one(i: int) -> str:
        await asyncio.sleep(max(0.0, start + window_s * i / n - time.perf_counter()))
        while True:
            resp = await pool.request(
                "POST",
                "/v1/requests",
                headers=auth(),
                json_body={"action": "bench-burst", "reason": f"bench: burst {i}"},
            )
            if resp.status != 503:
                break
            await asyncio.sleep(resp.retry_after_s)  # at capacity: back after Retry-After, as jit_client does
        if resp.status != 201:
            raise RuntimeError(f"create failed: {resp.status} {resp.body[:200]!r}")
        return remember(resp.json())["id"]

    t0 = time.time()
    ids = await asyncio.gather(*(one(i) for i in range(n)))
    sent_s = time.time() - t0
    await pool.close()
    return list(ids), t0, sent_s


def _button_values(node: Any) -> set[str]:
    out: set[str] = set()
    if isinstance(node, dict):
        if str(node.get("action_id", "")).startswith("jit_") and isinstance(node.get("value"), str):
            out.add(node["value"])
        for v in node.values():
            out |= _button_values(v)
    elif isinstance(node, list):
        for v in node:
            out |= _button_values(v)
    return out


def _posted(fake, ids: list[str]) -> tuple[dict[str, list[float]], list[tuple[float, int]]]:
    """(request id → times its own message (with its buttons) was posted,
    [(time, requests it names)] for each digest: a message with no buttons)."""
    wanted = set(ids)
    own: dict[str, list[float]] = {}
    digests: list[tuple[float, int]] = []
    for c in fake.calls("chat.postMessage"):
        if not c.ok or c.params.get("channel") != BURST_CHANNEL or c.params.get("thread_ts"):
            continue
        blocks = c.params.get("blocks") or []
        mine = _button_values(blocks) & wanted
        for rid in mine:
            own.setdefault(rid, []).append(c.time)
        if not mine:
            text = json.dumps(blocks) + str(c.params.get("text", ""))
            digests.append((c.time, sum(1 for rid in wanted if rid in text)))
    return own, digests


def run(sizes: Sizes, log=print) -> dict[str, Any]:
    log(
        f"slack burst: {sizes.burst} requests in {sizes.burst_window_s:g}s for one channel, Slack limited "
        "to ~1 message/s/channel"
    )
    stack = new_stack()
    try:
        serve = stack.serve(workers=2)
        worker = stack.worker(concurrency=2)
        fake = stack.slack
        fake.enforce_channel_rate(per_second=1.0)
        with RssSampler({"serve": serve.popen.pid, "worker": worker.popen.pid}) as rss:
            ids, t0, sent_s = asyncio.run(_burst(stack.port, sizes.burst, sizes.burst_window_s))
            deadline = time.monotonic() + sizes.burst_deadline_s
            last_report = time.monotonic()
            while time.monotonic() < deadline:
                own, digests = _posted(fake, ids)
                if len(own) >= len(ids):
                    break
                if time.monotonic() - last_report > 30:
                    log(f"  {len(own)}/{len(ids)} own messages after {time.time() - t0:.0f}s")
                    last_report = time.monotonic()
                time.sleep(0.5)
            time.sleep(1.5)  # let any stray duplicate land before counting
            own, digests = _posted(fake, ids)
            import redis as redislib

            from bot.store import keys

            r = redislib.Redis.from_url(stack.redis.url, decode_responses=True)
            pipe = r.pipeline(transaction=False)
            for rid in ids:
                pipe.hget(keys.request(rid), "message_ts")
            stored = sum(1 for ts in pipe.execute() if ts)
        calls = fake.calls("chat.postMessage")
        burst_calls = [c for c in calls if c.params.get("channel") == BURST_CHANNEL]
        own_at = [min(v) for v in own.values()]
        return {
            "method": (
                "requests created through POST /v1/requests, evenly spaced over the window, all for one channel; "
                "Slack stand-in (bench/slack.py) with enforce_channel_rate(per_second=1) (token bucket, burst 3, "
                "429 + Retry-After); "
                "product defaults for pacing (JIT_SLACK_POST_INTERVAL_MS=1000, digest after "
                "JIT_SLACK_DIGEST_AFTER=5 waiting). A request's own message = a posted message carrying its "
                "buttons; a digest = a message without buttons; duplicates = own messages beyond one."
            ),
            "requests": len(ids),
            "sent_in_s": round(sent_s, 2),
            "own_messages_visible": len(own),
            "all_own_messages_after_s": round(max(own_at) - t0, 1) if len(own) == len(ids) else None,
            "first_own_message_after_s": round(min(own_at) - t0, 1) if own_at else None,
            "first_digest_after_s": round(digests[0][0] - t0, 1) if digests else None,
            "digests": len(digests),
            "requests_named_in_digests": sum(n for _, n in digests),
            "message_ts_stored": stored,
            "post_message_calls": len(burst_calls),
            "rate_limited_429": sum(1 for c in burst_calls if c.status == 429),
            "duplicates": sum(len(v) - 1 for v in own.values()),
            "memory": rss.result(),
        }
    finally:
        close_stack(stack)
