"""The one place RQ is told what to run: the queue names, and jobs named by their functions.

`Dispatcher` is the store's `Effects` (due items handed to a job at once) and the Slack edge's way
to ask for a Home tab to be published. Jobs are referenced as functions, so a renamed or removed
job breaks at import, not in production.
"""

from __future__ import annotations

import time
import uuid

from redis import Redis
from rq import Queue

from bot.store import keys
from workers.jobs import run_due, run_due_batch
from workers.jobs.notify.home import publish_home, refresh_homes_quietly
from workers.queue.lane import LANE_KINDS, entry

ACCESS_QUEUE = "jit-access"  # grants, revokes, timeouts: never behind Slack traffic
SLACK_QUEUE = "jit-slack"
GATE_QUEUE = "jit-gates"  # telling GitHub/GitLab a decision: a slow platform holds up nothing else
QUEUES = (ACCESS_QUEUE, SLACK_QUEUE, GATE_QUEUE)

#: Kinds that only talk to Slack; everything else (grants, revokes, timeouts) never waits behind them.
SLACK_KINDS = ("slack:", "post:", "dm:", "remind:", "warn:", "bgalert:", "notice:", "usage:", "session:", "updates:")
#: Kinds that talk to a CI platform (workers/jobs/gate.py).
GATE_KINDS = ("gate:",)

#: Most due items one job carries.
MAX_BATCH = 20
#: How long a process trusts what it last read of whether a worker reads the access lane.
LANE_CHECK_S = 0.5


def queue_for(member: str) -> str:
    if member.startswith(GATE_KINDS):
        return GATE_QUEUE
    return SLACK_QUEUE if member.startswith(SLACK_KINDS) else ACCESS_QUEUE


class Dispatcher:
    def __init__(self, raw_redis: Redis) -> None:
        self.queues = {name: Queue(name, connection=raw_redis) for name in QUEUES}
        self._lane_open = False
        self._lane_checked = -LANE_CHECK_S

    def kick(self, members: list[str], token: str) -> None:
        self.kick_many([(m, token) for m in members])

    def lane_open(self) -> bool:
        """Whether some `jit worker` reads the access lane (workers/queue/lane.py), as last read
        at most LANE_CHECK_S ago."""
        if time.monotonic() - self._lane_checked >= LANE_CHECK_S:
            self._lane_open = bool(self.queues[ACCESS_QUEUE].connection.exists(keys.access_lane_alive()))
            self._lane_checked = time.monotonic()
        return self._lane_open

    def kick_many(self, items: list[tuple[str, str]], *, lane: bool = True) -> None:
        """Enqueue the items in one round trip. Grants and revokes take the access lane while a
        worker reads it (`lane`: unless the lane itself is handing them on). When many are due at
        once, several share a job, which spares RQ's per-job overhead (≈ 1–2 ms of CPU a job):
        grants and revokes spread over about four jobs so the workers share them; Slack and
        platform calls, paced anyway, go up to MAX_BATCH a job (a burst of new requests is a few
        jobs, not one per request)."""
        if not items:
            return
        laned = [item for item in items if item[0].startswith(LANE_KINDS)] if lane and self.lane_open() else []
        by_queue: dict[str, list[tuple[str, str]]] = {}
        for item in items:
            if not laned or not item[0].startswith(LANE_KINDS):
                by_queue.setdefault(queue_for(item[0]), []).append(item)
        first = next(iter(self.queues.values()))
        with first.connection.pipeline() as pipe:
            for name, group in by_queue.items():
                size = max(1, min(MAX_BATCH, -(-len(group) // 4) if name == ACCESS_QUEUE else len(group)))
                for i in range(0, len(group), size):
                    chunk = group[i : i + size]
                    tag = uuid.uuid4().hex[:6]
                    if len(chunk) == 1:
                        ((m, token),) = chunk
                        func, args, job_id = run_due, (m, token), f"{m.replace(':', '-')}-{token}-{tag}"
                    else:
                        func, args, job_id = run_due_batch, (chunk,), f"batch-{len(chunk)}-{tag}"
                    self.queues[name].enqueue_call(
                        func,
                        args=args,
                        job_id=job_id,
                        result_ttl=0,
                        failure_ttl=86400,
                        ttl=3600,
                        timeout=600,
                        pipeline=pipe,
                    )
            if laned:  # after RQ's enqueues: RQ opens the pipeline's MULTI itself
                pipe.rpush(keys.access_lane(), *(entry(m, t) for m, t in laned))
            pipe.execute()

    def waiting(self) -> int:
        """Jobs in the access queue no worker has started yet (the scheduler holds back while many)."""
        q = self.queues[ACCESS_QUEUE]
        return int(q.connection.llen(q.key))

    def refresh_homes(self) -> None:
        """Recent viewers' Home tabs follow a change, in a job of its own (views.publish is a
        Slack call per viewer; bursts coalesce in workers/jobs/notify/home.py)."""
        q = self.queues[SLACK_QUEUE]
        if q.connection.exists(keys.home_viewers()):
            q.enqueue_call(refresh_homes_quietly, result_ttl=0, failure_ttl=3600, ttl=600)

    def publish_home(self, user: str) -> None:
        """views.publish is a Slack call: a worker makes it, never a request thread."""
        self.queues[SLACK_QUEUE].enqueue_call(publish_home, args=(user,), result_ttl=0, failure_ttl=3600, ttl=600)
