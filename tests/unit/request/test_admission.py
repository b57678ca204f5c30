"""bot/request/http/admission.py: a server at its in-flight bound refuses at once (503 `overloaded`,
Retry-After) and stores nothing; health checks and long-polls are never refused for load; a place
freed is taken by the next request. The bound shrinks while requests that share the process take
longer than the latency budget, once per congestion and never below FLOOR, grows back as they
answer within it, and is whole again after a quiet spell; a request alone never moves it."""

from __future__ import annotations

import pytest
from support import WEB_TOKEN

from bot.request.http.admission import FLOOR, RECOVER_S, Admission
from bot.store import keys

BEARER = {"Authorization": f"Bearer {WEB_TOKEN}"}


def fill(app) -> Admission:
    admission = app.config["JIT_ADMISSION"]
    assert admission.limit > 0
    while admission.enter() is not None:
        pass
    return admission


def test_at_capacity_a_create_is_refused_at_once_and_nothing_is_stored(app, http, rt):
    admission = fill(app)
    refused = admission.refused
    resp = http.post("/v1/requests", json={"action": "deploy-prod", "reason": "flood"}, headers=BEARER)
    assert resp.status_code == 503
    assert resp.get_json()["error"] == "overloaded"
    assert int(resp.headers["Retry-After"]) >= 1
    assert rt.redis.zcard(keys.all_requests()) == 0, "a refused create leaves nothing behind"
    assert admission.refused == refused + 1

    admission.leave(None)  # one request in flight finished: the next one gets its place
    resp = http.post("/v1/requests", json={"action": "deploy-prod", "reason": "after"}, headers=BEARER)
    assert resp.status_code == 201, resp.get_json()
    assert rt.redis.zcard(keys.all_requests()) == 1


def test_every_answered_request_gives_its_place_back(app, http):
    admission = app.config["JIT_ADMISSION"]
    for _ in range(admission.limit * 2):
        http.post("/v1/requests", json={"action": "deploy-prod", "reason": "x"}, headers=BEARER)
        http.get("/v1/requests/nope", headers=BEARER)
        http.post("/v1/requests", data=b"{not json", headers={**BEARER, "Content-Type": "application/json"})
    assert admission.in_flight == 0 and admission.refused == 0


def test_health_checks_and_long_polls_are_not_refused_for_load(app, http):
    fill(app)
    assert http.get("/healthz").status_code == 200
    assert http.get("/readyz").status_code == 200
    created_elsewhere = http.get("/v1/requests/nope?wait=1", headers=BEARER)
    assert created_elsewhere.status_code != 503  # bounded per pipeline instead (LongPollLeases)
    assert http.get("/v1/requests/nope", headers=BEARER).status_code == 503


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def crowd(adm: Admission, n: int) -> list[float]:
    """n requests admitted at once."""
    taken = [adm.enter() for _ in range(n)]
    assert None not in taken, f"{n} at once were not all admitted under a bound of {adm.limit}"
    return taken


def test_slow_requests_that_share_the_process_cut_the_bound_and_the_next_is_refused(clock):
    adm = Admission(16, budget_ms=25, clock=clock)
    taken = crowd(adm, 16)
    assert adm.enter() is None  # the fixed part of the bound still holds
    clock.now += 0.2  # every one of them took 200 ms: the process is overloaded
    for t in taken:
        adm.leave(t)
    assert adm.limit == 12 and adm.cuts == 1  # once: all sixteen were slowed by the same crowd
    crowd(adm, 12)
    refused = adm.refused
    assert adm.enter() is None and adm.refused == refused + 1


def test_each_congestion_cuts_again_down_to_the_floor_never_below(clock):
    adm = Admission(16, budget_ms=25, clock=clock)
    seen = []
    for _ in range(20):
        taken = crowd(adm, adm.limit)
        clock.now += 0.1
        for t in taken:
            adm.leave(t)
        seen.append(adm.limit)
    assert seen[:5] == [12, 9, 6, 5, 3]
    assert seen[-1] == FLOOR and min(seen) == FLOOR


def test_a_request_alone_never_moves_the_bound_however_slow(clock):
    """A slow machine, one request at a time: fewer in flight would not make any of them faster."""
    adm = Admission(16, budget_ms=25, clock=clock)
    for _ in range(50):
        t = adm.enter()
        clock.now += 1.0
        adm.leave(t)
    assert adm.limit == 16 and adm.cuts == 0


def test_few_in_flight_under_a_large_bound_do_not_move_it(clock):
    adm = Admission(16, budget_ms=25, clock=clock)
    for _ in range(20):
        taken = crowd(adm, 3)  # 3 of 16: the bound shaped nothing
        clock.now += 1.0
        for t in taken:
            adm.leave(t)
    assert adm.limit == 16 and adm.cuts == 0


def test_fast_answers_at_the_bound_grow_it_back_one_per_bound_of_answers(clock):
    adm = Admission(16, budget_ms=25, clock=clock)
    for _ in range(6):  # 16 → 12 → 9 → 6 → 5 → 3 → 2
        taken = crowd(adm, adm.limit)
        clock.now += 0.1
        for t in taken:
            adm.leave(t)
    assert adm.limit == FLOOR
    grown = []
    for _ in range(40):
        taken = crowd(adm, adm.limit)
        clock.now += 0.005  # within the budget
        for t in taken:
            adm.leave(t)
        grown.append(adm.limit)
    assert grown == sorted(grown), "fast answers never shrink the bound"
    assert FLOOR < grown[-1] <= 16
    assert grown[0] <= FLOOR + 1, "one round of fast answers adds about one place, not many"
    assert adm.cuts == 6


def test_after_a_quiet_spell_the_bound_is_whole_again_for_a_burst(clock):
    adm = Admission(16, budget_ms=25, clock=clock)
    for _ in range(4):
        taken = crowd(adm, adm.limit)
        clock.now += 0.1
        for t in taken:
            adm.leave(t)
    assert adm.limit < 16
    clock.now += RECOVER_S / 2
    assert adm.enter() is not None and adm.limit < 16  # not quiet long enough yet
    adm.leave(None)
    clock.now += RECOVER_S
    crowd(adm, 16)  # a release's pipelines, all at once: taken whole
    assert adm.enter() is None


def test_with_no_budget_the_bound_stays_fixed(clock):
    adm = Admission(4, budget_ms=0, clock=clock)
    taken = crowd(adm, 4)
    assert adm.enter() is None
    clock.now += 10
    for t in taken:
        adm.leave(t)
    assert adm.limit == 4 and adm.cuts == 0
    crowd(adm, 4)


def test_with_no_bound_nothing_is_refused(clock):
    adm = Admission(0, budget_ms=25, clock=clock)
    taken = crowd(adm, 500)
    clock.now += 10
    for t in taken:
        adm.leave(t)
    assert adm.refused == 0 and adm.limit == 0
    crowd(adm, 500)


def test_through_the_hook_slow_crowded_requests_shrink_the_bound_and_the_rest_are_refused(app, http, rt, monkeypatch):
    """The app's own Admission: requests through the hook report their durations to it; while it
    is cut, the request over the cut bound gets the 503 and nothing is stored."""
    clock = Clock()
    adm = Admission(4, budget_ms=25, clock=clock)
    monkeypatch.setitem(app.config, "JIT_ADMISSION", adm)
    others = crowd(adm, 2)  # two requests in flight elsewhere in this process
    real_enter = adm.enter

    def enter_then_take_long():
        taken = real_enter()
        clock.now += 0.1  # this request will have taken 100 ms when it ends
        return taken

    monkeypatch.setattr(adm, "enter", enter_then_take_long)
    resp = http.post("/v1/requests", json={"action": "deploy-prod", "reason": "slow"}, headers=BEARER)
    assert resp.status_code == 201, resp.get_json()
    assert adm.cuts == 1 and adm.limit == 3 and adm.in_flight == 2
    monkeypatch.setattr(adm, "enter", real_enter)
    crowd(adm, 1)  # a third elsewhere: the cut bound is full
    before = rt.redis.zcard(keys.all_requests())
    resp = http.post("/v1/requests", json={"action": "deploy-prod", "reason": "over"}, headers=BEARER)
    assert resp.status_code == 503 and resp.get_json()["error"] == "overloaded"
    assert rt.redis.zcard(keys.all_requests()) == before
    for t in others:
        adm.leave(t)


def test_slow_refused_requests_do_not_talk_the_bound_down(app, http, monkeypatch):
    """Anyone can send a request with no token and trickle it: however slow such requests are,
    however crowded the process, only requests answered with success move the bound."""
    clock = Clock()
    adm = Admission(4, budget_ms=25, clock=clock)
    monkeypatch.setitem(app.config, "JIT_ADMISSION", adm)
    others = crowd(adm, 2)
    real_enter = adm.enter

    def enter_then_take_long():
        taken = real_enter()
        clock.now += 0.5
        return taken

    monkeypatch.setattr(adm, "enter", enter_then_take_long)
    for _ in range(10):
        assert http.post("/v1/requests", json={"action": "deploy-prod", "reason": "x"}).status_code == 401
        bad = http.post("/v1/requests", data=b"{not json", headers={**BEARER, "Content-Type": "application/json"})
        assert bad.status_code == 400
        assert http.get("/v1/requests/nope", headers=BEARER).status_code == 404
    assert adm.cuts == 0 and adm.limit == 4 and adm.in_flight == 2
    for t in others:
        adm.leave(t)
