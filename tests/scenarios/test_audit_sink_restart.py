"""A `jit worker` killed in the middle of streaming the audit trail loses nothing: the next one
resumes from the sink's cursor in Redis — real processes, a real receiver, SIGKILL."""

from __future__ import annotations

import json
import threading
import time

import redis as redislib
from procs import Stack
from sink_receivers import HttpReceiver, wait_until
from support import SECRET_KEY

from bot.core.crypto import AuditSigner
from bot.store import keys
from bot.store.audit import AuditKeys, AuditLog

SINK_SECRET = "sink-hmac-secret-0123456789abcdef"


class Appender:
    """Something keeps happening: audit events appended every few ms from another process's
    point of view (this test process holds JIT_SECRET_KEY, like a `jit serve` would)."""

    def __init__(self, url: str) -> None:
        self.audit = AuditLog(redislib.Redis.from_url(url, decode_responses=True), signer=AuditSigner(SECRET_KEY))
        self.stop = threading.Event()
        self.n = 0
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            self.n += 1
            self.audit.append("test.event", request_id=f"r{self.n:06d}", actor="U0LEAD1")
            self.stop.wait(0.01)

    def __enter__(self) -> Appender:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(10)


def test_a_worker_killed_mid_stream_is_replaced_and_the_sink_resumes_from_its_cursor():
    receiver = HttpReceiver(secret=SINK_SECRET).up()
    sink = {"type": "http", "name": "siem", "url": receiver.url, "secret": SINK_SECRET, "timeout": 1}
    try:
        with Stack(extra_env={"JIT_AUDIT_SINKS": json.dumps([sink])}) as stack:
            r = redislib.Redis.from_url(stack.redis.url, decode_responses=True)

            def cursor() -> int:
                return int(r.hget(keys.audit_sink("siem"), "seq") or 0)

            worker = stack.worker(concurrency=1)
            with Appender(stack.redis.url):
                wait_until(lambda: cursor() >= 30, timeout=60, what="the first worker streaming")
                worker.kill()  # SIGKILL mid-stream: no cleanup, its lease just lapses
                at_kill = cursor()
                received_at_kill = len(receiver.received.seqs())
                time.sleep(1.0)  # events keep coming while no worker runs
                assert cursor() == at_kill
                stack.worker(concurrency=1)
                wait_until(lambda: cursor() >= at_kill + 50, timeout=60, what="the new worker streaming")
            head = int(r.hget(keys.audit_head(), "seq"))
            wait_until(lambda: cursor() >= head, timeout=30, what="the new worker catching up")

            keys_ = AuditKeys(AuditSigner(SECRET_KEY).jwks())
            receiver.received.check(keys_, head)  # every event, in order, each chained and signed
            # resumed from the cursor, not from the start: nothing it had acknowledged came again
            seqs = receiver.received.seqs()
            again = [s for s in seqs[received_at_kill:] if s <= at_kill]
            assert again == [], f"re-sent after the restart though acknowledged before it: {again[:10]}"
    finally:
        receiver.down()
