"""Audit event → healthy sink: events appended at a steady rate (100/s in the full run) while a real
`jit worker` streams them to an HTTP receiver on loopback (JSON lines, HMAC-signed). Latency is
from just before an event is appended (this process holds JIT_SECRET_KEY, like `jit serve`)
until the receiver has it; every event must arrive, in order. Target: p99 under 1 s (the
promise is every event within 5 s).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import redis as redislib

from bench.common import RssSampler, Sizes, close_stack, new_stack, summary, wait_for
from bench.stack import SECRET_KEY, free_port
from bot.core.crypto import AuditSigner
from bot.store import keys
from bot.store.audit import AuditLog
from workers.backends.webhook import verify_signature

SINK_SECRET = "bench-sink-hmac-secret-0123456789"


class Receiver:
    """An HTTP sink on loopback: checks each batch's signature, keeps each event's first arrival
    time, and checks what a SIEM would: in order (re-deliveries of earlier ones allowed), none lost.
    (The test suite's receivers in tests/sink_receivers.py check more; the bench runs without tests/.)"""

    def __init__(self) -> None:
        self.port = free_port()
        self.first: dict[int, tuple[dict[str, Any], float]] = {}
        self.highest = 0
        self.problems: list[str] = []
        self.deliveries = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                at = time.time()
                ts, sig = self.headers.get("X-Jit-Request-Timestamp"), self.headers.get("X-Jit-Signature")
                if not verify_signature(SINK_SECRET, ts, body, sig):
                    receiver.problems.append("a batch with a bad signature")
                    self.send_response(401)
                    self.end_headers()
                    return
                with receiver.lock:
                    receiver.deliveries += 1
                    for line in body.decode().splitlines():
                        if line:
                            receiver.take(json.loads(line), at)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/ingest"

    def take(self, row: dict[str, Any], at: float) -> None:
        seq = int(row["seq"])
        if seq > self.highest + 1:
            self.problems.append(f"#{seq} arrived before #{self.highest + 1}: out of order")
        self.highest = max(self.highest, seq)
        self.first.setdefault(seq, (row, at))

    def has_all(self, upto: int) -> bool:
        with self.lock:
            return all(seq in self.first for seq in range(1, upto + 1))

    def down(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def run(sizes: Sizes, log=print) -> dict[str, Any]:
    rate, seconds = sizes.sink_events_per_s, sizes.sink_seconds
    n = int(rate * seconds)
    log(f"audit sink: {n} events at {rate:g}/s to an http sink")
    receiver = Receiver()
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
            wait_for(lambda: receiver.has_all(head), 60, what="every event at the sink")
        assert not receiver.problems, receiver.problems  # in order, signed, none lost
        first = {row.get("request_id"): at for row, at in receiver.first.values()}
        latencies = [(first[rid] - t) * 1000 for rid, t in sent.items() if rid in first]
        failed = False
        return {
            "events": n,
            "rate_per_s": rate,
            "appended_in_s": round(appended_s, 2),
            "latency_ms": summary(latencies),
            "missing": n - len(latencies),
            "over_5s": sum(1 for v in latencies if v > 5000),
            "deliveries": receiver.deliveries,
            "memory": rss.result(),
        }
    finally:
        receiver.down()
        close_stack(stack, failed)
