"""`jit worker` started while Redis is down: one line saying so, no traceback; it waits, and when
Redis comes up it does its work without a restart. Ctrl-C while it waits stops it cleanly."""

from __future__ import annotations

import signal

from faultkit import approve, ask, wait_status
from procs import Stack, wait_until
from support import RedisServer


def redis_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "Redis" in line]


def test_a_worker_started_before_redis_says_so_once_then_works_when_redis_comes():
    redis = RedisServer()  # its port is chosen; the server is not started yet
    try:
        with Stack(redis=redis) as stack:
            worker = stack.worker(concurrency=1)
            wait_until(lambda: redis_lines(worker.log()), 60, message="the worker's line about Redis")
            assert worker.alive, worker.log()
            (line,) = worker.log().strip().splitlines()  # that one line, and nothing else
            assert line.startswith("jit worker: Redis does not answer (")
            assert f"127.0.0.1:{redis.port}" in line and "waiting for it" in line and "REDIS_URL" in line
            assert "Traceback" not in worker.log()

            redis.start()
            stack.serve()
            rid, _ = ask(stack, "quick", ttl="1m", reason="granted by the worker that waited")
            stack.message_ts(rid)
            approve(stack, rid)
            wait_status(stack, rid, {"active"})
            assert redis_lines(worker.log()) == [line, "jit worker: Redis answers; starting"]
            assert "Traceback" not in worker.log()
            assert worker.stop(60) == 0, worker.log()
    finally:
        redis.cleanup()


def test_ctrl_c_while_waiting_for_redis_stops_the_worker_cleanly():
    redis = RedisServer()  # never started
    try:
        with Stack(redis=redis) as stack:
            worker = stack.worker(concurrency=2)
            wait_until(lambda: redis_lines(worker.log()), 60, message="the worker's line about Redis")
            worker.signal(signal.SIGINT)
            assert worker.popen.wait(60) == 0, worker.log()
            log = worker.log()
            assert log.strip().splitlines()[-1] == "jit worker: stopped while waiting for Redis"
            assert "Traceback" not in log
    finally:
        redis.cleanup()
