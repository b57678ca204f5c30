"""`jit worker`: RQ workers (no fork per job) plus the expiry scheduler, audit upkeep and the audit
sinks' delivery, with graceful shutdown."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from bot.policy_reload import PolicyReloader, install_sighup, watch
from bot.runtime import Runtime
from bot.settings import Settings
from bot.store import keys
from bot.store.connection import redis_from_url
from bot.store.due import DueQueue
from bot.store.metrics import instrument_slack
from workers.audit_sinks.delivery import AuditSinks
from workers.jobs import run_due_batch, run_expiries
from workers.queue.dispatch import QUEUES
from workers.queue.lane import REFRESH_S, LaneReader
from workers.queue.runner import Runner
from workers.queue.scheduler import Scheduler
from workers.queue.worker import JitWorker
from workers.upkeep import AuditUpkeep

#: The lane reader's socket timeout: its blocking pop waits REFRESH_S, so a read that takes this
#: long is a connection lost without a reset (a partition), not a quiet lane.
LANE_SOCKET_TIMEOUT_S = REFRESH_S + 10

#: The GIL's switch interval in the worker's own process (Python's default is 5 ms): 10 000
#: overdue expiries took 17.5-19.4 s with it, 20.3 s without (docs/performance.md, sixth pass).
SWITCH_INTERVAL_S = 0.001

#: Builds a process's parts (bot.wiring.build): a forked child builds its own.
Build = Callable[[Settings, str | None], Runtime]

log = logging.getLogger("jit.worker")


class _GracefulWorker(JitWorker):
    """RQ's warm shutdown on SIGTERM/SIGINT (the job in hand finishes, then the loop stops), also
    telling the forked children at once rather than after this process's own job is done."""

    on_stop = None

    def request_stop(self, signum, frame):
        if self.on_stop is not None:
            self.on_stop()
        super().request_stop(signum, frame)


def _rq_worker(rt: Runtime, burst: bool, on_stop=None) -> None:
    # SimpleWorker runs jobs in-process: a fork per job would cost tens of ms on every grant
    # and revoke. A job that crashes the process is recovered by the due queue's lease.
    # RQ's worker quits on a Redis error outside its blocking dequeue (a heartbeat, a job's
    # bookkeeping, its own teardown); Redis coming back must not need `jit worker` restarted,
    # so a worker that quit without being asked to is replaced after a pause.
    instrument_slack(rt.slack, rt.redis)
    stop = threading.Event()
    pause = 1.0
    while True:
        worker = None
        started = time.monotonic()
        try:  # the constructor already talks to Redis
            worker = _GracefulWorker(list(QUEUES), connection=rt.raw_redis, parts=rt)
            worker.on_stop = on_stop
            worker.work(burst=burst, logging_level="WARNING", with_scheduler=False)
        except (RedisConnectionError, RedisTimeoutError) as e:
            log.warning("RQ worker lost Redis (%s)", type(e).__name__)
        if burst or stop.is_set() or getattr(worker, "_shutdown_requested_date", None) is not None:
            return
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):  # RQ's own handlers need Redis
                signal.signal(sig, lambda *_: stop.set())
        pause = 1.0 if time.monotonic() - started > 60 else min(pause * 2, 10.0)
        log.warning("RQ worker quit unasked; starting a new one in %.0f s", pause)
        if stop.wait(pause):
            return


def _child(build: Build, settings: Settings, policy_path: str | None, burst: bool) -> None:
    rt = build(settings, policy_path)
    if not burst:
        reloader = PolicyReloader(rt)
        reloader.load_initial()
        install_sighup(reloader.start())
    _rq_worker(rt, burst)


def _learn_team(rt: Runtime) -> None:
    """Remember which workspace the bot token belongs to, so other workspaces are refused."""
    try:
        team = rt.slack.auth_test().get("team_id")
        if team:
            rt.redis.set(keys.slack_team(), team)
    except Exception as e:  # noqa: BLE001 - Slack may be down; the check then waits for next start
        log.warning("auth.test failed (%s); workspace check relies on SLACK_TEAM_ID", type(e).__name__)


#: Seconds between two tries of a Redis that does not answer at start-up.
REDIS_RETRY_SECONDS = 2.0


def wait_for_redis(rt: Runtime, every: float = REDIS_RETRY_SECONDS) -> bool:
    """Block until Redis answers, saying once (one line, no traceback) that the worker waits for it
    and once that it starts; False when SIGTERM or SIGINT (Ctrl-C) came first. `jit serve` answers
    503 while Redis is away; the worker, which has nothing to do without it, waits likewise."""
    stop = threading.Event()
    handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            handlers[sig] = signal.signal(sig, lambda *_: stop.set())
    waited = False
    try:
        while True:
            try:
                rt.raw_redis.ping()
                break
            except (RedisConnectionError, RedisTimeoutError) as e:
                if not waited:
                    print(
                        f"jit worker: Redis does not answer ({str(e).rstrip('.') or type(e).__name__}); "
                        f"waiting for it, trying every {every:g} s (check REDIS_URL, or start Redis)",
                        file=sys.stderr,
                        flush=True,
                    )
                    waited = True
            if stop.wait(every):
                print("jit worker: stopped while waiting for Redis", file=sys.stderr, flush=True)
                return False
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if waited:
        print("jit worker: Redis answers; starting", file=sys.stderr, flush=True)
    return True


#: Seconds between two looks at the forked children.
SUPERVISE_EVERY = 1.0


def _supervise(
    children: list[multiprocessing.Process],
    start: Callable[[], multiprocessing.Process],
    stopping: threading.Event,
    every: float = SUPERVISE_EVERY,
) -> None:
    """Replace a child that died (the OOM killer, a crash) until the worker stops: a job it held
    comes back through its due item's lease, and the worker keeps its concurrency."""
    while not stopping.wait(every):
        for i, p in enumerate(children):
            if p.is_alive() or stopping.is_set():
                continue
            log.warning("worker child died; replaced", extra={"pid": p.pid, "exitcode": p.exitcode})
            p.join(timeout=0)
            children[i] = start()


def run_worker(rt: Runtime, build: Build, concurrency: int = 2, burst: bool = False, scheduler: bool = True) -> int:
    if not wait_for_redis(rt):
        return 0
    rt.record_policy_loaded()
    if not burst:
        threading.Thread(target=_learn_team, args=(rt,), daemon=True).start()

    children: list[multiprocessing.Process] = []
    reloader = None
    if not burst:
        # SIGHUP or a changed file reloads the policy here and in every child (a child also
        # watches the file itself); installed before forking so children never die of a HUP.
        def forward_hup() -> None:
            for p in children:
                if p.pid:
                    try:
                        os.kill(p.pid, signal.SIGHUP)
                    except ProcessLookupError:
                        pass

        reloader = watch(rt, sighup=threading.current_thread() is threading.main_thread(), also=[forward_hup])
    ctx = multiprocessing.get_context("fork")

    def start_child() -> multiprocessing.Process:
        p = ctx.Process(target=_child, args=(build, rt.settings, rt.policy_path, burst), daemon=False)
        p.start()
        return p

    for _ in range(max(concurrency, 1) - 1):
        children.append(start_child())

    if not burst:
        # This process's revoking threads share its GIL with CPU-bound threads (its RQ worker's
        # Slack renders, the audit chainer): a thread back from a Redis reply waits for the GIL
        # up to the switch interval, and every revocation makes a few round trips.
        sys.setswitchinterval(SWITCH_INTERVAL_S)

    sched = None
    revoker = None
    stop_holding_metrics = None
    stop_chaining = None
    if scheduler:
        blocking = redis_from_url(rt.settings.redis_url, decode_responses=True, socket_timeout=None)
        if burst:  # one pass, everything through RQ (the burst worker below runs it and exits)
            Scheduler(rt.redis, blocking, rt.dispatcher).run_once()
        else:
            # expiries are revoked by threads of this process, straight from the scheduler
            revoker = Runner(lambda items, held: run_expiries(rt, items, held), DueQueue(rt.redis), name="jit-revoker")
            revoker.start()
            # counts are written once a second, not by every batch, and the trail is chained by
            # a thread of its own, not at the end of every batch
            stop_holding_metrics = rt.metrics.hold()
            stop_chaining = rt.audit.chain_in_background()
            sched = Scheduler(rt.redis, blocking, rt.dispatcher, revoker=revoker)
            threading.Thread(target=sched.run, name="jit-scheduler", daemon=True).start()

    lane = None
    lane_runner = None
    if not burst:
        # grants and revokes someone waits for start here at once, not after RQ's pickup
        lane_runner = Runner(lambda items, _held: run_due_batch(rt, items), DueQueue(rt.redis), name="jit-access")
        lane_runner.start()
        lane = LaneReader(
            rt.redis,
            # a read that outlasts its pop's timeout is a dead connection: raise and reconnect
            redis_from_url(rt.settings.redis_url, decode_responses=True, socket_timeout=LANE_SOCKET_TIMEOUT_S),
            lane_runner,
            lambda items: rt.dispatcher.kick_many(items, lane=False),
        ).start()

    upkeep = None
    sinks = None
    if scheduler and not burst:
        upkeep = AuditUpkeep(rt)  # audit retention and the periodic chain-head post
        upkeep.start()
        sinks = AuditSinks(rt)  # the trail streamed to SIEMs, one thread per sink
        sinks.start()

    forwarded = threading.Event()

    def forward(signum, frame):  # noqa: ARG001
        # once only: RQ reads a second SIGTERM as "cold shutdown", which would cut a child's job
        if forwarded.is_set():
            return
        forwarded.set()
        for p in children:
            if p.pid:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def stop_taking(signum: int) -> None:
        # RQ's warm shutdown began: the lane stops handing grants to this process's threads too
        # (what it pops now goes to RQ); the grants in hand finish below
        if lane is not None:
            lane.stop(join=False)
        forward(signum, None)

    if not burst and children:
        threading.Thread(
            target=_supervise, args=(children, start_child, forwarded), name="jit-supervisor", daemon=True
        ).start()

    try:
        log.info("worker started", extra={"concurrency": concurrency, "scheduler": scheduler})
        _rq_worker(rt, burst, on_stop=lambda: stop_taking(signal.SIGTERM))
    finally:
        if sched is not None:
            sched.stop()
        if lane is not None:
            lane.stop()
        if revoker is not None:
            revoker.stop()
        if stop_holding_metrics is not None:
            stop_holding_metrics()
        if lane_runner is not None:
            lane_runner.stop()
        if stop_chaining is not None:
            stop_chaining()  # what the threads above wrote last is chained before the exit
        if reloader is not None:
            reloader.stop()
        if upkeep is not None:
            upkeep.stop()
        if sinks is not None:
            sinks.stop()
        forward(signal.SIGTERM, None)
        for p in children:
            p.join(timeout=60)
    return 0
