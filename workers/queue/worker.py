"""RQ jobs that receive their process's parts: the worker hands each job what the process wired.

A job function is `fn(rt, *args)`; the enqueued job carries only `args` (RQ stores the function by
its import path). The worker process builds its parts once (bot/wiring.py) and gives them to
every job it runs, so jobs reach Redis, the store and Slack through arguments, not a global.
"""

from __future__ import annotations

from typing import Any

from rq import SimpleWorker
from rq.job import Job


class JitJob(Job):
    #: Set by the JitWorker running the job.
    parts: Any = None

    def _execute(self) -> Any:
        if self.parts is None:
            raise RuntimeError("a jit job runs only in a jit worker (JitWorker), which hands it its parts")
        return self.func(self.parts, *self.args, **self.kwargs)


class JitWorker(SimpleWorker):
    """RQ's no-fork worker (a fork per job would cost tens of ms on every grant and revoke)."""

    def __init__(self, *args: Any, parts: Any, **kwargs: Any) -> None:
        super().__init__(*args, job_class=JitJob, **kwargs)
        self.parts = parts

    def execute_job(self, job: Job, queue: Any) -> None:
        job.parts = self.parts
        super().execute_job(job, queue)
