"""A `jit worker` child dying (OOM killer, a crash) is replaced: the worker keeps its concurrency."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from faultkit import approve, ask, wait_status
from procs import Stack, wait_until


def children(pid: int) -> set[int]:
    """The direct children of `pid` (Linux /proc)."""
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out |= {int(c) for c in (task / "children").read_text().split()}
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def test_a_dead_worker_child_is_replaced_and_work_goes_on():
    with Stack() as stack:
        stack.serve()
        worker = stack.worker(concurrency=2)
        first = wait_until(lambda: children(worker.popen.pid), 30, message="the worker's child process")
        (child,) = first
        os.kill(child, signal.SIGKILL)
        replaced = wait_until(
            lambda: (now := children(worker.popen.pid)) and child not in now and now, 30, message="a new child"
        )
        assert len(replaced) == 1
        assert worker.alive
        assert "replaced" in worker.log()
        rid, _ = ask(stack, "quick", ttl="1m", reason="after the child died")
        stack.message_ts(rid)
        approve(stack, rid)
        wait_status(stack, rid, {"active"})
