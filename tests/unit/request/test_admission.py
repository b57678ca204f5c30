"""bot/request/http/admission.py: a server at its in-flight bound refuses at once (503 `overloaded`,
Retry-After) and stores nothing; health checks and long-polls are never refused for load; a place
freed is taken by the next request. The bound shrinks while requests that share the process take
longer than the latency budget, once per congestion and never below FLOOR, grows back as they
answer within it, and is whole again after a quiet spell; a request alone never moves it."""

from __future__ import annotations

import pytest
from support import WEB_TOKEN

from bot.request.http import routes
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


def round_of(adm: Admission, clock: Clock, n: int, took: float) -> None:
    """n requests admitted at once, each answered `took` seconds later."""
    taken = crowd(adm, n)
    clock.now += took
    for t in taken:
        adm.leave(t)


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
        round_of(adm, clock, adm.limit, 0.1)
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
        round_of(adm, clock, 3, 1.0)  # 3 of 16: the bound shaped nothing
    assert adm.limit == 16 and adm.cuts == 0


def test_fast_answers_at_the_bound_grow_it_back_one_per_bound_of_answers(clock):
    adm = Admission(16, budget_ms=25, clock=clock)
    for _ in range(6):  # 16 → 12 → 9 → 6 → 5 → 3 → 2
        round_of(adm, clock, adm.limit, 0.1)
    assert adm.limit == FLOOR
    grown = []
    for _ in range(40):
        round_of(adm, clock, adm.limit, 0.005)  # within the budget
        grown.append(adm.limit)
    assert grown == sorted(grown), "fast answers never shrink the bound"
    assert FLOOR < grown[-1] <= 16
    assert grown[0] <= FLOOR + 1, "one round of fast answers adds about one place, not many"
    assert adm.cuts == 6


def test_after_a_quiet_spell_the_bound_is_whole_again_for_a_burst(clock):
    adm = Admission(16, budget_ms=25, clock=clock)
    for _ in range(4):
        round_of(adm, clock, adm.limit, 0.1)
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
    round_of(adm, clock, 500, 10)
    assert adm.refused == 0 and adm.limit == 0
    crowd(adm, 500)


class SlowHook:
    """The app's Admission on a fake clock, with each request's time set: `upload` seconds to
    receive its body, `work` seconds of the server's own after that."""

    def __init__(self, app, monkeypatch, limit: int = 4) -> None:
        self.clock = Clock()
        self.adm = Admission(limit, budget_ms=25, clock=self.clock)
        self.upload = self.work = 0.0
        monkeypatch.setitem(app.config, "JIT_ADMISSION", self.adm)
        real_read, real_leave = routes.bounded_input.read_body, self.adm.leave

        def read_body(*a, **kw):
            self.clock.now += self.upload
            return real_read(*a, **kw)

        def leave(*a, **kw):
            self.clock.now += self.work
            return real_leave(*a, **kw)

        monkeypatch.setattr(routes.bounded_input, "read_body", read_body)
        monkeypatch.setattr(self.adm, "leave", leave)


@pytest.fixture
def slow(app, monkeypatch) -> SlowHook:
    return SlowHook(app, monkeypatch)


def test_through_the_hook_slow_crowded_requests_shrink_the_bound_and_the_rest_are_refused(slow, http, rt):
    """Requests through the hook report their durations to the app's Admission; while it is cut,
    the request over the cut bound gets the 503 and nothing is stored."""
    others = crowd(slow.adm, 2)  # two requests in flight elsewhere in this process
    slow.work = 0.1
    resp = http.post("/v1/requests", json={"action": "deploy-prod", "reason": "slow"}, headers=BEARER)
    assert resp.status_code == 201, resp.get_json()
    assert slow.adm.cuts == 1 and slow.adm.limit == 3 and slow.adm.in_flight == 2
    crowd(slow.adm, 1)  # a third elsewhere: the cut bound is full
    before = rt.redis.zcard(keys.all_requests())
    resp = http.post("/v1/requests", json={"action": "deploy-prod", "reason": "over"}, headers=BEARER)
    assert resp.status_code == 503 and resp.get_json()["error"] == "overloaded"
    assert rt.redis.zcard(keys.all_requests()) == before
    for t in others:
        slow.adm.leave(t)


def test_a_trickled_body_does_not_talk_the_bound_down(slow, http):
    """A pipeline (token and all) that sends its bodies slowly: the upload is its time, not the
    server's, however crowded the process."""
    others = crowd(slow.adm, 2)
    slow.upload = 1.5
    for i in range(10):
        resp = http.post("/v1/requests", json={"action": "deploy-prod", "reason": f"trickle {i}"}, headers=BEARER)
        assert resp.status_code in (200, 201), resp.get_json()
    assert slow.adm.cuts == 0 and slow.adm.limit == 4 and slow.adm.in_flight == 2
    for t in others:
        slow.adm.leave(t)


def test_slow_refused_or_failed_requests_do_not_talk_the_bound_down(slow, http, rt, monkeypatch):
    """Anyone can send a request with no token, a bad body or an unknown id: however slow such
    requests are, however crowded the process, only requests answered with success move the
    bound; nor does one that failed with an error."""
    others = crowd(slow.adm, 2)
    slow.work = 0.5
    for _ in range(5):
        assert http.post("/v1/requests", json={"action": "deploy-prod", "reason": "x"}).status_code == 401
        bad = http.post("/v1/requests", data=b"{not json", headers={**BEARER, "Content-Type": "application/json"})
        assert bad.status_code == 400
        assert http.get("/v1/requests/nope", headers=BEARER).status_code == 404

    def broken(*a, **kw):
        raise RuntimeError("boom")

    monkeypatch.setattr(rt.requests, "create", broken)
    try:
        failed = http.post("/v1/requests", json={"action": "deploy-prod", "reason": "x"}, headers=BEARER).status_code
    except RuntimeError:  # the test app may hand the exception on instead of a 500
        failed = 500
    assert failed == 500
    assert slow.adm.cuts == 0 and slow.adm.limit == 4 and slow.adm.in_flight == 2
    for t in others:
        slow.adm.leave(t)


def test_giving_a_grant_back_is_never_refused_for_load(app, http, rt):
    """DELETE ends access: a server at its bound still takes it (and OPTIONS never counts)."""
    created = http.post("/v1/requests", json={"action": "deploy-prod", "reason": "x"}, headers=BEARER).get_json()
    fill(app)
    assert http.post("/v1/requests", json={"action": "deploy-prod", "reason": "y"}, headers=BEARER).status_code == 503
    assert http.open("/v1/requests", method="OPTIONS").status_code != 503
    token = {"Authorization": f"Bearer {created['request_token']}"}
    released = http.delete(f"/v1/requests/{created['id']}", headers=token)
    assert released.status_code == 200, released.get_json()
    assert released.get_json()["status"] in ("cancelled", "revoked")


def test_alone_at_the_floor_slow_requests_do_not_hold_the_bound_down(clock):
    """Cut to the floor, then one slow request at a time for longer than RECOVER_S: none of them
    shared the process, so the bound is whole again for the next burst."""
    adm = Admission(16, budget_ms=25, clock=clock)
    while adm.limit > FLOOR:
        round_of(adm, clock, adm.limit, 0.1)
    for _ in range(int(RECOVER_S * 4)):
        t = adm.enter()
        clock.now += 0.5
        adm.leave(t)
    crowd(adm, 16)


def test_fast_answers_at_the_bound_add_one_place_per_bound_of_answers(clock):
    adm = Admission(16, budget_ms=25, clock=clock)
    round_of(adm, clock, 16, 0.1)
    round_of(adm, clock, 12, 0.1)
    assert adm.limit == 9
    for _ in range(2):  # in each round the answers given while at least half the bound was in use count
        round_of(adm, clock, 9, 0.005)
    assert adm.limit == 10  # about one per bound's worth of answers, not one per answer
