"""Change windows: when an action may be requested, in its own time zone, across DST changes."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from freezegun import freeze_time
from policy_rules_support import entries, rules_policy_text
from support import WEB_TOKEN

import workers.backends  # noqa: F401 - load C extensions before freezegun fakes datetime
from bot.core.policy.windows import Windows, parse_window


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


PARIS = Windows.parse(["mon-fri 09:00-18:00 Europe/Paris"])


# ------------------------------------------------------------------ the windows themselves


def test_paris_office_hours_in_winter_are_utc_plus_one():
    # Wednesday 14 January 2026: CET, UTC+1
    assert not PARIS.is_open(utc("2026-01-14T07:59:00"))  # 08:59 in Paris
    assert PARIS.is_open(utc("2026-01-14T08:00:00"))  # 09:00
    assert PARIS.is_open(utc("2026-01-14T16:59:00"))  # 17:59
    assert not PARIS.is_open(utc("2026-01-14T17:00:00"))  # 18:00: the end is exclusive
    assert PARIS.next_opening(utc("2026-01-14T07:30:00")) == utc("2026-01-14T08:00:00")


def test_paris_office_hours_in_summer_are_utc_plus_two():
    # Wednesday 15 July 2026: CEST, UTC+2
    assert not PARIS.is_open(utc("2026-07-15T06:59:00"))
    assert PARIS.is_open(utc("2026-07-15T07:00:00"))
    assert not PARIS.is_open(utc("2026-07-15T16:00:00"))  # 18:00 in Paris
    assert PARIS.next_opening(utc("2026-07-15T16:30:00")) == utc("2026-07-16T07:00:00")


def test_a_weekend_that_springs_forward():
    # Friday 27 March 2026 after hours; clocks go forward on Sunday 29 March
    friday_evening = utc("2026-03-27T17:30:00")  # 18:30 CET
    assert not PARIS.is_open(friday_evening)
    assert not PARIS.is_open(utc("2026-03-28T10:00:00"))  # Saturday
    # Monday 09:00 is now CEST: 07:00 UTC, not 08:00 as the week before
    assert PARIS.next_opening(friday_evening) == utc("2026-03-30T07:00:00")
    assert not PARIS.is_open(utc("2026-03-30T06:59:00"))
    assert PARIS.is_open(utc("2026-03-30T07:00:00"))


def test_a_weekend_that_falls_back():
    friday_evening = utc("2026-10-23T16:30:00")  # 18:30 CEST
    assert PARIS.next_opening(friday_evening) == utc("2026-10-26T08:00:00")  # 09:00 CET
    assert not PARIS.is_open(utc("2026-10-26T07:30:00"))
    assert PARIS.is_open(utc("2026-10-26T08:00:00"))


def test_new_york_changes_clocks_on_another_date_than_paris():
    ny = Windows.parse(["mon-fri 09:00-17:00 America/New_York"])
    # 9 March 2026: New York is already on EDT (since 8 March), Paris is still on CET
    assert ny.next_opening(utc("2026-03-06T23:00:00")) == utc("2026-03-09T13:00:00")
    assert ny.is_open(utc("2026-03-09T13:00:00")) and not ny.is_open(utc("2026-03-09T12:59:00"))
    # the week before, 09:00 EST was 14:00 UTC
    assert ny.is_open(utc("2026-03-02T14:00:00")) and not ny.is_open(utc("2026-03-02T13:30:00"))
    # the same instant: open in New York, closed in Paris
    instant = utc("2026-03-09T18:00:00")
    assert ny.is_open(instant) and not PARIS.is_open(instant)


def test_several_windows_in_several_time_zones():
    w = Windows.parse(["mon-fri 09:00-12:00 Asia/Tokyo", "mon-fri 09:00-12:00 Europe/London"])
    assert w.is_open(utc("2026-01-14T01:00:00"))  # 10:00 in Tokyo
    assert w.is_open(utc("2026-01-14T10:00:00"))  # 10:00 in London
    assert not w.is_open(utc("2026-01-14T05:00:00"))
    assert w.next_opening(utc("2026-01-14T05:00:00")) == utc("2026-01-14T09:00:00")


def test_a_window_past_midnight_belongs_to_the_day_it_starts():
    w = Windows.parse(["fri 22:00-02:00 Europe/London"])
    assert w.is_open(utc("2026-01-16T22:30:00"))  # Friday night
    assert w.is_open(utc("2026-01-17T01:30:00"))  # Saturday 01:30: still Friday's window
    assert not w.is_open(utc("2026-01-17T02:00:00"))
    assert not w.is_open(utc("2026-01-15T23:00:00"))  # Thursday night
    assert w.next_opening(utc("2026-01-17T02:00:00")) == utc("2026-01-23T22:00:00")


def test_a_start_time_skipped_by_spring_forward_moves_past_the_gap():
    # 02:30 does not exist in Paris on 29 March 2026 (02:00 CET → 03:00 CEST)
    w = Windows.parse(["sun 02:30-04:00 Europe/Paris"])
    opening = w.next_opening(utc("2026-03-28T12:00:00"))
    assert opening == utc("2026-03-29T01:30:00")  # 03:30 CEST
    assert not w.is_open(utc("2026-03-29T01:15:00")) and w.is_open(utc("2026-03-29T01:45:00"))
    assert not w.is_open(utc("2026-03-29T02:00:00"))  # 04:00 CEST


def test_day_lists_aliases_and_the_end_of_the_day():
    assert parse_window("sat,sun 10:00-24:00").is_open(utc("2026-01-17T23:59:00"))
    assert not parse_window("sat,sun 10:00-24:00").is_open(utc("2026-01-18T09:59:00"))
    assert parse_window("daily 00:00-24:00 UTC").is_open(utc("2026-01-14T03:00:00"))
    assert parse_window("weekdays 08:00-09:00 UTC").days == frozenset(range(5))
    assert parse_window("fri-mon 08:00-09:00 UTC").days == frozenset({4, 5, 6, 0})
    assert parse_window("Mon-Fri 09:00-18:00 Europe/Paris").days == frozenset(range(5))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mon-fri 09:00-18:00 Mars/Olympus", "unknown time zone"),
        ("someday 09:00-18:00", "unknown day"),
        ("mon-fri 9-18", "is not a window"),
        ("mon 25:00-26:00", "not a time of day"),
        ("mon 10:00-10:00", "starts and ends at the same time"),
    ],
)
def test_bad_windows_are_refused_with_a_reason(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_window(spec)


# ------------------------------------------------------------------ the hook honours them


@pytest.fixture
def rules(policy_file, state_dir):
    policy_file.write_text(rules_policy_text(str(state_dir)))
    return policy_file


def ask(jit, **body):
    return jit.http.post(
        "/v1/requests",
        json={"action": "change-db", "reason": "migration 42", **body},
        headers={"Authorization": f"Bearer {WEB_TOKEN}"},
    )


def test_inside_the_window_a_request_is_made(rules, jit):
    with freeze_time("2026-01-14T08:30:00Z"):  # Wednesday 09:30 in Paris
        resp = ask(jit)
    assert resp.status_code == 201, resp.get_json()
    assert resp.get_json()["status"] == "pending"


def test_outside_the_window_the_hook_answers_403_with_the_next_opening(rules, jit):
    with freeze_time("2026-03-27T17:30:00Z"):  # Friday 18:30 in Paris, DST starts on Sunday
        resp = ask(jit)
    assert resp.status_code == 403
    body = resp.get_json()
    assert body["error"] == "outside_window"
    assert body["next_opening"] == "2026-03-30T07:00:00.000Z"
    assert "mon-fri 09:00-18:00 Europe/Paris" in body["message"]
    assert jit.rt.redis.zcard("jit:idx:all") == 0  # nothing was created
    assert entries(jit.rt, "request.created") == []


def test_break_glass_may_ask_outside_the_window(rules, jit):
    with freeze_time("2026-01-17T03:00:00Z"):  # Saturday night
        resp = ask(jit, break_glass=True)
    assert resp.status_code == 201, resp.get_json()
    rid = resp.get_json()["id"]
    created = entries(jit.rt, "request.created", rid)[0]
    assert created["details"]["break_glass"] is True
    assert created["details"]["outside_window"] is True


def test_break_glass_needs_break_glass_approvers(jit):
    # the common policy has no break_glass section
    resp = jit.http.post(
        "/v1/requests",
        json={"action": "quick", "reason": "x", "break_glass": True},
        headers={"Authorization": f"Bearer {WEB_TOKEN}"},
    )
    assert resp.status_code == 400 and resp.get_json()["error"] == "no_break_glass"


def test_an_idempotent_retry_after_the_window_closed_returns_the_same_request(rules, jit):
    headers = {"Authorization": f"Bearer {WEB_TOKEN}", "Idempotency-Key": "run-7-attempt-1"}
    body = {"action": "change-db", "reason": "migration 42"}
    with freeze_time("2026-01-14T16:59:00Z"):  # 17:59 in Paris
        first = jit.http.post("/v1/requests", json=body, headers=headers)
    with freeze_time("2026-01-14T17:01:00Z"):  # 18:01: closed
        again = jit.http.post("/v1/requests", json=body, headers=headers)
        fresh = jit.http.post("/v1/requests", json=body, headers={"Authorization": f"Bearer {WEB_TOKEN}"})
    assert first.status_code == 201 and again.status_code == 200
    assert again.get_json()["id"] == first.get_json()["id"]
    assert fresh.status_code == 403
