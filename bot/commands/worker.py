"""`jit worker`: RQ workers plus the expiry scheduler (workers/run.py), built from the settings."""

from __future__ import annotations

from bot import logs
from bot.settings import load_settings
from bot.wiring import build, run_worker


def worker(concurrency: int | None, burst: bool, scheduler: bool) -> int:
    rt = build(load_settings())
    concurrency = rt.settings.jit_worker_concurrency if concurrency is None else concurrency
    logs.setup(rt.settings.jit_log_level)
    rt.load_policy_or_exit(keep=False)  # a bad policy stops the worker now, Redis or not
    return run_worker(rt, concurrency=concurrency, burst=burst, scheduler=scheduler)
