"""The hook's per-pipeline limits, counted in Redis across processes."""

from __future__ import annotations

import multiprocessing
import threading

import freezegun
import pytest
import redis as redislib
from freezegun import freeze_time

from bot.domain import keys
from bot.hook.ratelimit import PipelineRateLimiter, RateLimited

PROCESSES = 4
THREADS = 5
EACH = 10
N = PROCESSES * THREADS * EACH


def _create_in_one_millisecond(limiter: PipelineRateLimiter, url: str, errors) -> None:
    """One gunicorn worker: its threads each count EACH creations, all in the same frozen millisecond."""
    limiter.r = redislib.Redis.from_url(url, decode_responses=True)
    limiter._script = limiter.r.register_script(limiter._script.script)
    freezegun.configure(default_ignore_list=[])  # frozen in threads too (this process only)
    with freeze_time("2030-01-01T00:00:00.000Z"):

        def create() -> None:
            for _ in range(EACH):
                try:
                    limiter.check("web-ci")
                except RateLimited:
                    errors.put("refused within the limit")

        threads = [threading.Thread(target=create) for _ in range(THREADS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def test_concurrent_creations_from_several_processes_in_one_millisecond_are_all_counted(redis_url):
    r = redislib.Redis.from_url(redis_url, decode_responses=True)
    # Built once and inherited by every process, as when gunicorn workers share one layout:
    # the same object id and the same per-process counter in each.
    limiter = PipelineRateLimiter(r, per_minute=N)
    ctx = multiprocessing.get_context("fork")
    errors = ctx.Queue()
    procs = [
        ctx.Process(target=_create_in_one_millisecond, args=(limiter, redis_url, errors))
        for _ in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert errors.empty()
    assert r.zcard(keys.rate_limit("web-ci")) == N  # none overwrote another
    with freeze_time("2030-01-01T00:00:00.000Z"), pytest.raises(RateLimited):
        limiter.check("web-ci")  # the limit is reached exactly


def test_rate_limit_refuses_over_the_limit_and_frees_a_slot_after_a_minute(redis_url):
    r = redislib.Redis.from_url(redis_url, decode_responses=True)
    limiter = PipelineRateLimiter(r, per_minute=3)
    with freeze_time("2030-01-01T00:00:00Z") as frozen:
        for _ in range(3):
            limiter.check("web-ci")
        with pytest.raises(RateLimited) as refused:
            limiter.check("web-ci")
        assert refused.value.retry_after_s == 60
        limiter.check("other-ci")  # per pipeline
        frozen.tick(60.001)
        limiter.check("web-ci")
