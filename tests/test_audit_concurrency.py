"""Writers in several processes append to one chain: every entry lands, the chain holds."""

from __future__ import annotations

import threading

import redis as redislib

from bot.domain.audit import AuditLog


def test_racing_writers_keep_one_unbroken_chain(redis_url):
    logs = [AuditLog(redislib.Redis.from_url(redis_url, decode_responses=True)) for _ in range(4)]
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
