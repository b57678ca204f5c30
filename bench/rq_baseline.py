"""The baseline for revocation lateness: the same revokes, scheduled with RQ's own `enqueue_at`.

`python -m bench.rq_baseline` is an RQ `SimpleWorker` started with `with_scheduler=True` (the
same no-fork execution model as `jit worker`, so only the scheduling differs). Its job runs
jit's own revoke handler for the grant, exactly as `jit worker` would when the grant ends.
"""

from __future__ import annotations

import sys

QUEUE = "bench-rq-revoke"


def revoke(rt, request_id: str) -> None:
    """RQ job: revoke one grant now (what a naive `enqueue_at(expires_at, revoke)` design runs)."""
    from workers.jobs.revoke import revoke as revoke_job

    revoke_job(rt, request_id, "")  # no due-queue claim: RQ scheduled it


def main() -> int:
    from bot.settings import load_settings
    from bot.wiring import build
    from workers.queue.dispatch import SLACK_QUEUE
    from workers.queue.worker import JitWorker

    rt = build(load_settings())
    rt.policy  # noqa: B018 - load it before the first job, as `jit worker` does
    # Revokes first, then the Slack message updates they cause: the order `jit worker` uses.
    worker = JitWorker([QUEUE, SLACK_QUEUE], connection=rt.raw_redis, parts=rt)
    worker.work(with_scheduler=True, logging_level="WARNING")
    return 0


if __name__ == "__main__":
    sys.exit(main())
