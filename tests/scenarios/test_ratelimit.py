"""The hook's per-pipeline limits, counted in Redis across processes: creations per minute and
long-polls open at once."""

from __future__ import annotations

import multiprocessing
import threading

import freezegun
import pytest
import redis as redislib
from freezegun import freeze_time

from bot.store import keys
from bot.store.ratelimit import LongPollLeases, PipelineRateLimiter, RateLimited, TooManyLongPolls

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
        ctx.Process(target=_create_in_one_millisecond, args=(limiter, redis_url, errors)) for _ in range(PROCESSES)
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


def test_long_poll_lease_of_a_dead_process_ends_with_its_wait(redis_url):
    r = redislib.Redis.from_url(redis_url, decode_responses=True)
    leases = LongPollLeases(r, per_pipeline=2)
    with freeze_time("2030-01-01T00:00:00Z") as frozen:
        # two polls whose process died mid-wait: taken, never given back
        dead = [leases.hold("web-ci", rid, 30) for rid in ("r1", "r2")]
        for poll in dead:
            poll.__enter__()
        with pytest.raises(TooManyLongPolls) as refused, leases.hold("web-ci", "r3", 30):
            pass
        assert refused.value.retry_after_s == 10
        assert 0 < r.pttl(keys.long_polls_of_pipeline("web-ci")) <= 35_000  # the key goes too
        frozen.tick(35.001)  # their wait plus the margin
        with leases.hold("web-ci", "r3", 30):
            assert r.zcard(keys.long_polls_of_pipeline("web-ci")) == 1
    assert r.zcard(keys.long_polls_of_pipeline("web-ci")) == 0
    assert r.zcard(keys.long_polls_of_request("r3")) == 0


def test_long_polls_unbounded_per_pipeline_when_the_setting_is_zero(redis_url):
    r = redislib.Redis.from_url(redis_url, decode_responses=True)
    leases = LongPollLeases(r, per_pipeline=0, per_request=1)
    with (
        leases.hold("web-ci", "a", 5),
        leases.hold("web-ci", "b", 5),
        leases.hold("web-ci", "c", 5),
    ):
        with pytest.raises(TooManyLongPolls), leases.hold("web-ci", "a", 5):
            pass
