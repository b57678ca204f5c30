"""SIGHUP to `jit serve` (a policy reload, a deploy): gunicorn boots fresh workers and retires
the old ones, and every request that arrives across the switch is answered — none gets a 500."""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from pathlib import Path

import requests
from procs import Proc, Stack, wait_until


def workers_of(master_pid: int) -> set[int]:
    path = Path(f"/proc/{master_pid}/task/{master_pid}/children")
    return {int(p) for p in path.read_text().split()}


def answers_across_a_switch(stack: Stack, serve: Proc) -> Counter:
    """Status codes of requests sent (each on a fresh connection: a retiring worker may still
    accept some) from before a SIGHUP until every old worker has exited."""
    old = workers_of(serve.popen.pid)
    assert old
    codes: Counter = Counter()
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                codes[requests.get(stack.url + "/healthz", timeout=10).status_code] += 1
            except requests.RequestException as e:
                codes[type(e).__name__] += 1

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        os.kill(serve.popen.pid, signal.SIGHUP)
        wait_until(
            lambda: not (old & workers_of(serve.popen.pid)),
            timeout=60,
            message="the old workers to exit",
        )
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    return codes


def test_requests_across_a_worker_switch_are_all_answered():
    with Stack() as s:
        serve = s.serve(workers=2)
        for _ in range(2):
            codes = answers_across_a_switch(s, serve)
            assert codes[200] > 0 and set(codes) == {200}, (codes, serve.log()[-3000:])
        assert serve.alive
