"""Audit event → healthy sink: events appended at a steady rate (100/s in the full run) while a real
`jit worker` streams them to an HTTP receiver on loopback (JSON lines, HMAC-signed). Latency is
from just before an event is appended (this process holds JIT_SECRET_KEY, like `jit serve`)
until the receiver has it; every event must arrive, in order. Target: p99 under 1 s (the
promise is every event within 5 s).
"""

from __future__ import annotations

import json
import time
from typing import Any

import redis as redislib

from bench.common import RssSampler, Sizes, close_stack, new_stack, summary, wait_for  # puts tests/ on sys.path
from bot.core.crypto import AuditSigner
from bot.store import keys
from bot.store.audit import AuditKeys, AuditLog

# isort: split
from sink_receivers import HttpReceiver
from support import SECRET_KEY

SINK_SECRET = "bench-sink-hmac-secret-0123456789"


def run(sizes: Sizes, log=print) -> dict[str, Any]:
    rate, seconds = sizes.sink_events_per_s, sizes.sink_seconds
    n = int(rate * seconds)
    log(f"audit sink: {n} events at {rate:g}/s to an http sink")
    receiver = HttpReceiver(secret=SINK_SECRET).up()
    sink = {"type": "http", "name": "bench", "url": receiver.url, "secret": SINK_SECRET}
    stack = new_stack(JIT_AUDIT_SINKS=json.dumps([sink]))
    failed = True
    try:
        worker = stack.worker(concurrency=1)
        r = redislib.Redis.from_url(stack.redis.url, decode_responses=True)
        # the worker is streaming once its own first event (policy.loaded) reached the receiver
        wait_for(lambda: r.hget(keys.audit_sink("bench"), "seq"), 60, what="the sink's first delivery")
        audit = AuditLog(r, signer=AuditSigner(SECRET_KEY))
        sent: dict[str, float] = {}
        with RssSampler({"worker": worker.popen.pid}) as rss:
            start = time.perf_counter()
            for i in range(n):
                time.sleep(max(0.0, start + i / rate - time.perf_counter()))
                rid = f"bench{i:06d}"
                sent[rid] = time.time()
                audit.append("bench.event", request_id=rid, actor="bench", details={"i": i})
            appended_s = time.perf_counter() - start
            head = int(r.hget(keys.audit_head(), "seq"))
            wait_for(lambda: receiver.received.has_all(head), 60, what="every event at the sink")
        with receiver.received.lock:
            arrivals = list(zip(receiver.received.rows, receiver.received.at, strict=True))
        first: dict[str, float] = {}
        for row, at in arrivals:
            if row.get("request_id") in sent:
                first.setdefault(row["request_id"], at)
        latencies = [(first[rid] - t) * 1000 for rid, t in sent.items() if rid in first]
        receiver.received.check(AuditKeys(AuditSigner(SECRET_KEY).jwks()), head)  # in order, none lost
        failed = False
        return {
            "events": n,
            "rate_per_s": rate,
            "appended_in_s": round(appended_s, 2),
            "latency_ms": summary(latencies),
            "missing": n - len(latencies),
            "over_5s": sum(1 for v in latencies if v > 5000),
            "deliveries": len(receiver.requests),
            "memory": rss.result(),
        }
    finally:
        receiver.down()
        close_stack(stack, failed)
