"""bot/store/pipelined.py: script calls in one round trip, no `SCRIPT EXISTS` first, and every call
run exactly once even when Redis lost its scripts (restarted, or `SCRIPT FLUSH`) between batches."""

from __future__ import annotations

import pytest
import redis as redislib
from redis.exceptions import ResponseError

from bot.store.pipelined import run_scripts

COUNT = "return redis.call('INCR', KEYS[1]) * tonumber(ARGV[1])"
APPEND = "return redis.call('APPEND', KEYS[1], ARGV[1])"
FAIL = "return redis.error_reply('refused: ' .. ARGV[1])"


@pytest.fixture
def r(redis_url):
    client = redislib.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def _commands(r) -> dict[str, int]:
    stats = r.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def test_calls_run_in_order_in_one_round_trip_without_asking_which_scripts_exist(r):
    count, append = r.register_script(COUNT), r.register_script(APPEND)
    r.script_load(COUNT), r.script_load(APPEND)
    before = _commands(r)
    out = run_scripts(r, [(count, ["n"], [10]), (append, ["s"], ["a"]), (count, ["n"], [1]), (append, ["s"], ["b"])])
    assert out == [10, 1, 2, 2]
    assert r.get("n") == "2" and r.get("s") == "ab"
    after = _commands(r)
    assert after.get("script|exists", 0) == before.get("script|exists", 0)
    assert after["evalsha"] - before.get("evalsha", 0) == 4


def test_scripts_redis_lost_are_loaded_and_only_their_calls_sent_again(r):
    count, append = r.register_script(COUNT), r.register_script(APPEND)
    run_scripts(r, [(count, ["n"], [1]), (append, ["s"], ["a"])])  # both loaded
    r.script_flush()  # a restarted Redis holds no script
    out = run_scripts(r, [(count, ["n"], [1]), (append, ["s"], ["b"]), (count, ["n"], [1])])
    assert out == [2, 2, 3]
    assert r.get("n") == "3" and r.get("s") == "ab"  # each call ran once: none twice, none dropped


def test_a_call_that_fails_raises_after_the_others_ran(r):
    count, fail = r.register_script(COUNT), r.register_script(FAIL)
    with pytest.raises(ResponseError, match="refused: no"):
        run_scripts(r, [(count, ["n"], [1]), (fail, [], ["no"]), (count, ["n"], [1])])
    assert r.get("n") == "2"  # not a transaction: the other calls are done, as with a pipeline


def test_no_calls_no_round_trip(r):
    before = _commands(r)
    assert run_scripts(r, []) == []
    assert _commands(r).get("evalsha", 0) == before.get("evalsha", 0)
