"""A sink's cursor only moves forward; retention's floor is the lowest cursor of the sinks."""

from __future__ import annotations

import redis as redislib

from bot.store import keys
from bot.store.audit_sinks import FROM_START, SinkCursors


def test_the_cursor_never_moves_back_and_the_floor_is_the_slowest_sink(redis_url):
    r = redislib.Redis.from_url(redis_url, decode_responses=True)
    c = SinkCursors(r)
    assert c.cursor("a") == (FROM_START, 0)
    assert c.floor([]) is None
    assert c.floor(["a"]) == FROM_START  # acknowledged nothing: holds everything
    assert c.advance("a", "1000-5", 5) and c.advance("b", "999-9", 9)
    assert not c.advance("a", "990-3", 3)  # a late delivery that lost its lease
    assert not c.advance("a", "1000-4", 99)  # order is the stream's, whatever seq an entry claims
    assert c.cursor("a") == ("1000-5", 5)
    assert c.floor(["a", "b"]) == "999-9"
    assert c.behind(["a", "b"], 7) == {"a": 5}


def test_an_outage_is_counted_once_alerted_once_and_cleared_on_recovery(redis_url):
    r = redislib.Redis.from_url(redis_url, decode_responses=True)
    c = SinkCursors(r)
    first = c.failed("s", "POST answered 503")
    again = c.failed("s", "cannot connect: ConnectionRefusedError")
    assert again.since_ms == first.since_ms and again.attempts == 2
    assert c.claim_alert("s") and not c.claim_alert("s")
    ended = c.recovered("s")
    assert ended is not None and ended.alerted and ended.attempts == 2
    assert c.recovered("s") is None
    assert r.hget(keys.audit_sink("s"), "last_error") is None


def test_lag_is_the_age_of_the_oldest_unacknowledged_entry(redis_url):
    r = redislib.Redis.from_url(redis_url, decode_responses=True)
    c = SinkCursors(r)
    r.xadd(keys.audit_stream(), {"data": "{}"}, id="1000-1")
    r.xadd(keys.audit_stream(), {"data": "{}"}, id="4000-2")
    assert c.lag_seconds("s", at_ms=6000) == 5.0
    c.advance("s", "1000-1", 1)
    assert c.lag_seconds("s", at_ms=6000) == 2.0
    c.advance("s", "4000-2", 2)
    assert c.lag_seconds("s", at_ms=6000) == 0.0
    c.register(["s", "t"])
    assert set(c.lags()) == {"s", "t"}
