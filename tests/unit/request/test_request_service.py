"""bot/request/service.py: RequestService.create and authorize_follow_up as plain calls.

What a pipeline may ask for (actions, ttl, windows, break glass, requester), what the request
holds once asked, idempotency, and who may follow it up — no HTTP in between."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time
from policy_rules_support import verified
from redis_state import redis_dump
from support import SECRET_KEY

from bot.core import errors as E
from bot.core.crypto import RequestTokens, token_hash
from bot.core.model import Status
from bot.request.schemas import RequestBody
from bot.settings import load_settings
from bot.store import keys
from bot.wiring import build

OTHER_SECRET_KEY = "another-deployment-secret-key-0123456789-xyz"


def body(action: str = "deploy-prod", **over) -> RequestBody:
    return RequestBody(action=action, reason=over.pop("reason", "release 4.2"), **over)


def stored_ids(rt) -> list[str]:
    return rt.redis.zrange(keys.all_requests(), 0, -1)


def test_a_request_takes_its_terms_from_the_policy(rt):
    made = rt.requests.create("web-ci", body(requested_by="alice@example.com", context={"ref": "refs/heads/main"}))
    req = made.request
    assert made.created and req.status == Status.PENDING
    assert (req.action, req.pipeline, req.channel) == ("deploy-prod", "web-ci", "C0PROD")
    assert req.ttl == timedelta(minutes=15), "the action's default ttl"
    assert req.approvals_required == 2
    assert req.pending_until - req.created_at == timedelta(minutes=20), "the action's own pending timeout"
    assert req.requester_slack_id == "U0ALICE", "requested_by mapped through `people`"
    assert req.policy_sha256 == rt.policy.sha256
    assert rt.store.get(req.id) == req
    assert req.request_token_hash == token_hash(made.request_token)
    (created,) = [e.body for e in rt.audit.entries_for_request(req.id)]
    assert (created["event"], created["actor"]) == ("request.created", "pipeline:web-ci")
    assert created["details"]["ttl_seconds"] == 900 and created["details"]["requester"] == "U0ALICE"


def test_text_shaped_like_a_slack_id_names_nobody(rt):
    req = rt.requests.create("web-ci", body(requested_by="U0LEAD1")).request
    assert req.requester_slack_id is None, "only `people` turns a name into a Slack user"


@pytest.mark.parametrize(
    "pipeline, asked, error",
    [
        ("web-ci", body("no-such-action"), E.UnknownAction),
        ("other-ci", body("deploy-prod"), E.ActionNotAllowed),
        ("no-such-pipeline", body("read-secret"), E.ActionNotAllowed),
        ("web-ci", body(ttl="2h"), E.BadRequest),  # over deploy-prod's max of 1h
        ("web-ci", body(ttl="soon"), E.BadRequest),
        ("web-ci", body(break_glass=True), E.NoBreakGlass),  # the common policy has no break glass
    ],
)
def test_what_a_pipeline_may_not_ask_for_is_refused_before_anything_is_stored(rt, pipeline, asked, error):
    with pytest.raises(error):
        rt.requests.create(pipeline, asked)
    assert stored_ids(rt) == []
    assert rt.audit.count() == 0


def test_a_ttl_up_to_the_max_is_granted_as_asked(rt):
    assert rt.requests.create("web-ci", body(ttl="1h")).request.ttl == timedelta(hours=1)
    assert rt.requests.create("web-ci", body(ttl=90)).request.ttl == timedelta(seconds=90)


def test_the_same_idempotency_key_and_body_return_the_same_request(rt):
    first = rt.requests.create("web-ci", body(), idempotency_key="run-1")
    again = rt.requests.create("web-ci", body(), idempotency_key="run-1")
    assert not again.created
    assert (again.request.id, again.request_token) == (first.request.id, first.request_token)
    assert stored_ids(rt) == [first.request.id]
    with pytest.raises(E.IdempotencyKeyReused):
        rt.requests.create("web-ci", body(reason="another release"), idempotency_key="run-1")
    other = rt.requests.create("web-ci", body(), idempotency_key="run-2")
    assert other.created and other.request.id != first.request.id


def test_a_replay_after_the_secret_key_rotated_returns_the_token_the_201_gave(rt, monkeypatch):
    first = rt.requests.create("web-ci", body(), idempotency_key="run-1")
    monkeypatch.setenv("JIT_SECRET_KEY", OTHER_SECRET_KEY)
    monkeypatch.setenv("JIT_PREVIOUS_SECRET_KEYS", SECRET_KEY)
    rotated = build(load_settings())
    again = rotated.requests.create("web-ci", body(), idempotency_key="run-1")
    assert (again.request.id, again.request_token) == (first.request.id, first.request_token)
    assert rotated.requests.authorize_follow_up(first.request.id, first.request_token).via == "request_token"
    # the old key dropped: the token cannot be made again, and nothing else hands one out
    monkeypatch.setenv("JIT_PREVIOUS_SECRET_KEYS", "")
    with pytest.raises(ValueError, match="request token"):
        build(load_settings()).requests.create("web-ci", body(), idempotency_key="run-1")


def test_a_request_stored_by_the_previous_version_gets_its_sealed_token_back(rt):
    """Before request tokens were derived, a random one was sealed: in `jit:req:<id>:token`, in the
    Idempotency-Key's value, or (earliest) in the request hash. A replay still returns it."""
    for where in ("token key", "idempotency value", "request hash"):
        made = rt.requests.create("web-ci", body(), idempotency_key=where)
        rid, old = made.request.id, secrets.token_urlsafe(32)
        rt.redis.hset(keys.request(rid), "request_token_hash", token_hash(old))
        sealed = rt.vault.seal(old)
        if where == "token key":
            rt.redis.set(keys.request_token(rid), sealed)
        elif where == "request hash":
            rt.redis.hset(keys.request(rid), "request_token_enc", sealed)
        else:
            (idem,) = rt.redis.keys(keys.idempotency("web-ci", "*"))
            rt.redis.set(idem, rt.redis.get(idem) + "|" + sealed)
        again = rt.requests.create("web-ci", body(), idempotency_key=where)
        assert (again.request.id, again.request_token) == (rid, old), where
        assert rt.requests.authorize_follow_up(rid, old).via == "request_token"
        for k in rt.redis.keys(keys.idempotency("web-ci", "*")):
            rt.redis.delete(k)


def test_the_same_key_from_another_pipeline_is_another_request(rt):
    a = rt.requests.create("web-ci", body("read-secret"), idempotency_key="k")
    b = rt.requests.create("other-ci", body("read-secret"), idempotency_key="k")
    assert b.created and a.request.id != b.request.id


def test_an_unknown_requester_is_refused_where_the_policy_says_so(rt, repolicy):
    repolicy(rt, ("  pending_timeout: 30m\n", "  pending_timeout: 30m\n  unknown_requester: refuse\n"))
    with pytest.raises(E.RequesterUnknown):
        rt.requests.create("web-ci", body(requested_by="mallory"))
    assert stored_ids(rt) == []
    assert rt.requests.create("web-ci", body(requested_by="alice")).request.requester_slack_id == "U0ALICE"


# ------------------------------------------------------------------ windows and break glass (rules policy)


def test_outside_its_windows_an_action_may_be_asked_for_only_with_break_glass(rrt):
    with freeze_time("2026-12-05 12:00:00"):  # a Saturday
        with pytest.raises(E.OutsideWindow) as refused:
            rrt.requests.create("web-ci", body("office-hours"))
        assert refused.value.next_opening == datetime(2026, 12, 7, 9, 0, tzinfo=UTC)
        assert stored_ids(rrt) == []
        req = rrt.requests.create("web-ci", body("office-hours", break_glass=True)).request
    assert req.status == Status.PENDING
    assert rrt.store.fields(req.id, "break_glass", "outside_window") == {
        "break_glass": "requested",
        "outside_window": "1",
    }


def test_inside_its_window_an_action_is_asked_for_as_usual(rrt):
    with freeze_time("2026-12-07 10:00:00"):  # a Monday
        req = rrt.requests.create("web-ci", body("office-hours")).request
    assert rrt.store.fields(req.id, "outside_window") == {}


def test_a_retry_after_the_window_closed_returns_the_request_made_inside_it(rrt):
    with freeze_time("2026-12-04 17:59:00"):  # Friday, a minute before closing
        first = rrt.requests.create("web-ci", body("office-hours"), idempotency_key="job-7")
    with freeze_time("2026-12-04 18:05:00"):
        again = rrt.requests.create("web-ci", body("office-hours"), idempotency_key="job-7")
    assert not again.created and again.request.id == first.request.id


# ------------------------------------------------------------------ verified (OIDC) requests


def test_on_a_verified_request_the_token_wins_and_routing_comes_from_it_only(rrt):
    made = rrt.requests.create(
        "web-ci", body("deploy-env", context={"repository": "evil/repo"}), verified=verified("prod")
    )
    req = made.request
    assert req.context["repository"] == "acme/deploy" and req.context["environment"] == "prod"
    assert req.requested_by == "octocat" and "requested_by" in req.verified_keys
    with pytest.raises(E.BadRequest, match="environment"):
        rrt.requests.create("web-ci", body("deploy-env", context={"environment": "prod"}), verified=verified(None))


def test_an_unverified_request_is_never_auto_approved(rrt):
    req = rrt.requests.create("web-ci", body("deploy-staging", context={"environment": "staging"})).request
    assert req.status == Status.PENDING and req.decided_by is None


def test_a_verified_request_matching_the_rule_is_approved_at_once_within_the_daily_cap(rrt):
    with freeze_time("2026-05-04T10:00:00Z"):
        made = [rrt.requests.create("web-ci", body("deploy-staging"), verified=verified()).request for _ in range(3)]
    assert [r.status for r in made] == [Status.APPROVED, Status.APPROVED, Status.PENDING]
    assert made[0].decided_by == "auto"
    skipped = [e.body for e in rrt.audit.entries_for_request(made[2].id) if e.body["event"] == "auto_approve.skipped"]
    assert skipped and "daily cap of 2" in skipped[0]["details"]["why"]


# ------------------------------------------------------------------ following a request up


def test_only_the_request_token_follows_a_request_up(rt):
    made = rt.requests.create("web-ci", body())
    assert rt.requests.authorize_follow_up(made.request.id, made.request_token).via == "request_token"
    other = rt.requests.create("web-ci", body())
    for bearer in ("pipeline-token-web-ci-0123456789", other.request_token, ""):
        with pytest.raises(E.NotFound):
            rt.requests.authorize_follow_up(made.request.id, bearer)
    with pytest.raises(E.NotFound):
        rt.requests.authorize_follow_up("no-such-id", made.request_token)


def test_a_request_token_is_made_from_the_secret_key_and_the_id_and_never_stored(rt):
    made = rt.requests.create("web-ci", body())
    rid, token = made.request.id, made.request_token
    assert token == RequestTokens(SECRET_KEY).token(rid)
    assert len(token) == 43 and token_hash(token) == rt.store.get(rid).request_token_hash  # 256 bits, base64url
    # nothing token-shaped in Redis: no sealed copy, no key of its own, the token nowhere
    assert not rt.redis.exists(keys.request_token(rid))
    assert "request_token_enc" not in rt.redis.hgetall(keys.request(rid))
    everything = redis_dump(rt.redis)
    assert token not in everything and token_hash(token) in everything  # the scan reads the request hash
    # every request its own token; without the key, another deployment makes other tokens
    other = rt.requests.create("web-ci", body())
    assert other.request_token != token and RequestTokens(SECRET_KEY).token(other.request.id) == other.request_token
    elsewhere = RequestTokens(OTHER_SECRET_KEY)
    assert elsewhere.token(rid) != token
    for bearer in (elsewhere.token(rid), RequestTokens(SECRET_KEY).token(other.request.id), token_hash(token)):
        with pytest.raises(E.NotFound):
            rt.requests.authorize_follow_up(rid, bearer)


def test_an_oidc_token_follows_up_only_from_the_same_run(rrt):
    run = {"run_id": "42", "run_attempt": "1"}
    req = rrt.requests.create("web-ci", body("deploy-env"), verified=verified("prod", **run)).request
    same = rrt.requests.authorize_follow_up(req.id, "some-jwt", verified("prod", **run), pipeline="web-ci")
    assert same.via == "oidc:acme/deploy/42/1"
    for caller, pipeline in [
        (verified("prod", run_id="42", run_attempt="2"), "web-ci"),  # a re-run
        (verified("prod", run_id="43", run_attempt="1"), "web-ci"),
        (verified("prod", **run), "other-ci"),
    ]:
        with pytest.raises(E.NotFound):
            rrt.requests.authorize_follow_up(req.id, "some-jwt", caller, pipeline=pipeline)
