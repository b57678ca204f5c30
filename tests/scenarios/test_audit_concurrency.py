"""Writers in several threads and processes append to one chain through the outbox: every entry
lands once, in outbox order, and the chain holds."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import defaultdict

import redis as redislib
from procs import wait_until
from support import ROOT, SECRET_KEY

from bot.core.crypto import AuditSigner
from bot.store import keys
from bot.store.audit import AuditLog


def audit_log(redis_url: str) -> AuditLog:
    return AuditLog(redislib.Redis.from_url(redis_url, decode_responses=True), signer=AuditSigner(SECRET_KEY))


def test_racing_writers_keep_one_unbroken_chain(redis_url):
    logs = [audit_log(redis_url) for _ in range(4)]
    barrier = threading.Barrier(len(logs))

    def write(log, n):
        barrier.wait()
        for i in range(50):
            log.append("test.race", actor=f"writer-{n}", details={"i": i})

    threads = [threading.Thread(target=write, args=(log, n)) for n, log in enumerate(logs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    checked, broken = logs[0].verify()
    assert broken is None and checked == 200
    seqs = [e.body["seq"] for e in logs[0].entries()]
    assert seqs == list(range(1, 201))


# A writer process: waits for the go signal, then appends (`append`) or flushes (`flush`) from
# `threads` threads at once.
CHILD = """
import sys, threading, redis
from bot.store.audit import AuditLog
from bot.core.crypto import AuditSigner
url, key, name, mode, threads, n = sys.argv[1:7]
r = redis.Redis.from_url(url, decode_responses=True)
r.rpush("test:ready", name)
r.blpop("test:go:" + name, timeout=60)
def work(t):
    log = AuditLog(redis.Redis.from_url(url, decode_responses=True), signer=AuditSigner(key))
    for i in range(int(n)):
        if mode == "append":
            log.append("test.race", actor=f"{name}-{t}", details={"i": i})
        else:
            log.flush(limit=5)
ts = [threading.Thread(target=work, args=(t,)) for t in range(int(threads))]
[t.start() for t in ts]
[t.join() for t in ts]
"""


def start_children(redis_url: str, specs: list[tuple[str, str, int, int]]) -> list[subprocess.Popen]:
    """Start writer processes and release them together once all are ready."""
    r = redislib.Redis.from_url(redis_url, decode_responses=True)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, redis_url, SECRET_KEY, name, mode, str(threads), str(n)],
            cwd=str(ROOT),
        )
        for name, mode, threads, n in specs
    ]
    wait_until(lambda: r.llen("test:ready") == len(specs), timeout=60, message="writer processes ready")
    for name, *_ in specs:
        r.rpush(f"test:go:{name}", "1")
    return procs


def test_appenders_in_threads_and_processes_keep_one_chain_in_each_writers_order(redis_url):
    procs = start_children(redis_url, [("p1", "append", 3, 40), ("p2", "append", 3, 40)])
    here = audit_log(redis_url)
    mine = [
        threading.Thread(
            target=lambda t=t: [here.append("test.race", actor=f"main-{t}", details={"i": i}) for i in range(40)]
        )
        for t in range(2)
    ]
    for t in mine:
        t.start()
    for t in mine:
        t.join()
    for p in procs:
        assert p.wait(120) == 0
    checked, broken = here.verify()
    assert broken is None and checked == 2 * 3 * 40 + 2 * 40
    per_writer = defaultdict(list)
    for e in here.entries():
        per_writer[e.body["actor"]].append(e.body["details"]["i"])
    assert len(per_writer) == 8 and all(v == list(range(40)) for v in per_writer.values())
    assert here.r.llen(keys.audit_outbox()) == 0


def test_racing_flushers_chain_the_outbox_in_its_order(redis_url):
    """Events pushed by transitions (raw RPUSH, nobody flushed) are chained exactly once, in
    the order they were pushed, however many processes and threads flush at once."""
    log = audit_log(redis_url)
    r = log.r
    pipe = r.pipeline(transaction=False)
    for i in range(300):
        body = log.event_body("test.pushed", actor="store", details={"i": i})
        pipe.rpush(keys.audit_outbox(), '{"body":' + body + ',"patch":{"n":' + str(i) + "}}")
    pipe.execute()
    procs = start_children(redis_url, [("f1", "flush", 2, 40), ("f2", "flush", 2, 40)])
    flushers = [
        threading.Thread(target=lambda: [audit_log(redis_url).flush(limit=7) for _ in range(10)]) for _ in range(2)
    ]
    for t in flushers:
        t.start()
    for t in flushers:
        t.join()
    for p in procs:
        assert p.wait(120) == 0
    log.flush()  # whatever the racers' limits left
    trail = [json.loads(f["data"]) for _, f in r.xrange(keys.audit_stream())]
    assert [b["details"]["i"] for b in trail] == list(range(300))
    assert all(b["details"]["n"] == b["details"]["i"] for b in trail)
    assert log.verify() == (300, None) and r.llen(keys.audit_outbox()) == 0
