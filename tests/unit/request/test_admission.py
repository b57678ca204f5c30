"""bot/request/http/admission.py through the hook: a server at its in-flight bound refuses at once
(503 `overloaded`, Retry-After) and stores nothing; health checks and long-polls are never refused
for load; a place freed is taken by the next request."""

from __future__ import annotations

from support import WEB_TOKEN

from bot.request.http.admission import Admission
from bot.store import keys

BEARER = {"Authorization": f"Bearer {WEB_TOKEN}"}


def fill(app) -> Admission:
    admission = app.config["JIT_ADMISSION"]
    assert admission.limit > 0
    while admission.enter():
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

    admission.leave()  # one request in flight finished: the next one gets its place
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
