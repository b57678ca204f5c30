"""The baseline for revocation lateness: the same revokes, scheduled with RQ's own `enqueue_at`.

`python -m bench.rq_baseline` is an RQ `SimpleWorker` started with `with_scheduler=True` (the
same no-fork execution model as `jit worker`, so only the scheduling differs). Its job runs
jit's own revoke handler for the grant, exactly as `jit worker` would when the grant ends.
"""

from __future__ import annotations

import sys

QUEUE = "bench-rq-revoke"


def revoke(request_id: str) -> None:
    """RQ job: revoke one grant now (what a naive `enqueue_at(expires_at, revoke)` design runs)."""
    from bot.wiring import current
    from workers.jobs import do_revoke

    do_revoke(current(), request_id, "")  # no due-queue claim: RQ scheduled it


def main() -> int:
    from rq import SimpleWorker

    from bot.wiring import Runtime, install
    from bot.settings import load_settings
    from workers.queue.scheduler import SLACK_QUEUE

    rt = Runtime(load_settings())
    install(rt)
    rt.policy  # noqa: B018 - load it before the first job, as `jit worker` does
    # Revokes first, then the Slack message updates they cause: the order `jit worker` uses.
    worker = SimpleWorker([QUEUE, SLACK_QUEUE], connection=rt.raw_redis)
    worker.work(with_scheduler=True, logging_level="WARNING")
    return 0


if __name__ == "__main__":
    sys.exit(main())
