"""`jit worker`: RQ workers (no fork per job) plus the expiry scheduler, with graceful shutdown."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading

from rq import SimpleWorker

from bot.domain import keys
from bot.runtime import Runtime, install
from workers.expiry import ACCESS_QUEUE, SLACK_QUEUE, Scheduler

log = logging.getLogger("jit.worker")


def _rq_worker(rt: Runtime, burst: bool) -> None:
    # SimpleWorker runs jobs in-process: a fork per job would cost tens of ms on every grant
    # and revoke. A job that crashes the process is recovered by the due queue's lease.
    worker = SimpleWorker([ACCESS_QUEUE, SLACK_QUEUE], connection=rt.raw_redis)
    worker.work(burst=burst, logging_level="WARNING", with_scheduler=False)


def _child(settings, policy_path, burst: bool) -> None:
    rt = Runtime(settings, policy_path=policy_path)
    install(rt)
    _rq_worker(rt, burst)


def _learn_team(rt: Runtime) -> None:
    """Remember which workspace the bot token belongs to, so other workspaces are refused."""
    try:
        team = rt.slack.auth_test().get("team_id")
        if team:
            rt.redis.set(keys.slack_team(), team)
    except Exception as e:  # noqa: BLE001 - Slack may be down; the check then waits for next start
        log.warning("auth.test failed (%s); workspace check relies on SLACK_TEAM_ID", type(e).__name__)


def run_worker(rt: Runtime, concurrency: int = 2, burst: bool = False, scheduler: bool = True) -> int:
    rt.record_policy_loaded()
    if not burst:
        threading.Thread(target=_learn_team, args=(rt,), daemon=True).start()

    children: list[multiprocessing.Process] = []
    ctx = multiprocessing.get_context("fork")
    for _ in range(max(concurrency, 1) - 1):
        p = ctx.Process(target=_child, args=(rt.settings, rt.policy_path, burst), daemon=False)
        p.start()
        children.append(p)

    sched = None
    if scheduler:
        from bot.runtime import redis_from_url

        blocking = redis_from_url(rt.settings.redis_url, decode_responses=True, socket_timeout=None)
        sched = Scheduler(rt.redis, blocking, rt.dispatcher)
        if burst:
            sched.run_once()
        else:
            threading.Thread(target=sched.run, name="jit-scheduler", daemon=True).start()

    def forward(signum, frame):  # noqa: ARG001
        for p in children:
            if p.pid:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    try:
        log.info("worker started", extra={"concurrency": concurrency, "scheduler": scheduler})
        _rq_worker(rt, burst)
    finally:
        if sched is not None:
            sched.stop()
        forward(signal.SIGTERM, None)
        for p in children:
            p.join(timeout=60)
    return 0
