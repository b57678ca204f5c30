"""bot/store/requests.py: each transition, one Lua script, against a real Redis.

For every transition: the statuses it leaves (and the ones it refuses, touching nothing), the
audit event it pushes to the outbox in the same step, what it schedules in the due queue and
what it hands to a job at once (kicks, under a claim token)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from unit_support import RULE

from bot.core.model import Status
from bot.store import keys
from bot.store.due import DueQueue
from bot.store.requests import DECISION_MESSAGE_MS, LEASE_MS, valid_id

MIN = 60_000
RETENTION_S = 3600  # the `bare` fixture's Store

# ------------------------------------------------------------------ which status each transition leaves


def _approve(b, rid: str, t: int):
    return b.approve(rid, "U0LEAD2", t)


def _auto_approve(b, rid: str, t: int):
    return b.store.auto_approve(rid, "jit:auto:test", 5, "rule", t, b.event("request.approved"))


def _break_glass(b, rid: str, t: int):
    return b.store.break_glass(rid, "U0ONCALL", 600, "db is down, restoring", t, b.event("request.approved"))


def _deny(b, rid: str, t: int):
    return b.store.close(rid, Status.DENIED, t, {Status.PENDING}, b.event("request.denied"), decided_by="U0LEAD2")


def _cancel(b, rid: str, t: int):
    return b.store.close(rid, Status.CANCELLED, t, {Status.PENDING, Status.APPROVED}, b.event("request.cancelled"))


def _revoke(b, rid: str, t: int):
    return b.store.revoke(rid, "U0LEAD2", t, b.event("grant.revoke_requested"))


def _fail(b, rid: str, t: int):
    return b.store.fail(rid, "target down", t, b.event("request.failed"))


#: transition → (call, statuses it accepts, the status it leaves)
TRANSITIONS = {
    "approve": (_approve, {Status.PENDING}, Status.APPROVED),
    "auto_approve": (_auto_approve, {Status.PENDING}, Status.APPROVED),
    "break_glass": (_break_glass, {Status.PENDING}, Status.APPROVED),
    "deny": (_deny, {Status.PENDING}, Status.DENIED),
    "cancel": (_cancel, {Status.PENDING, Status.APPROVED}, Status.CANCELLED),
    "revoke": (_revoke, {Status.ACTIVE}, Status.REVOKED),
    "fail": (_fail, {Status.APPROVED}, Status.FAILED),
}


@pytest.mark.parametrize("start", list(Status))
@pytest.mark.parametrize("name", list(TRANSITIONS))
def test_each_transition_leaves_only_its_from_statuses(bare, name, start):
    call, accepts, leaves = TRANSITIONS[name]
    rid = bare.in_status(start)
    before = bare.snapshot(rid)
    out = call(bare, rid, bare.t0 + 2000)
    if start in accepts:
        assert out.ok, out
        assert bare.status(rid) == leaves
        assert bare.outbox(), "an accepted transition pushes its audit event"
    else:
        assert (out.result, out.status) == ("decided", start.value)
        assert bare.snapshot(rid) == before, "a refused transition changes nothing"
        assert bare.kicks.calls == []
        assert bare.r.get("jit:auto:test") is None


@pytest.mark.parametrize("name", list(TRANSITIONS))
def test_a_transition_on_a_missing_request_writes_nothing(bare, name):
    call, _, _ = TRANSITIONS[name]
    out = call(bare, "nosuch", bare.t0)
    assert not out.ok
    assert out.result in ("missing", "decided")
    assert not bare.r.exists(keys.request("nosuch"))
    assert bare.outbox() == [] and bare.kicks.calls == []


# ------------------------------------------------------------------ create


def test_create_stores_a_pending_request_and_schedules_its_timeout_and_first_message(bare):
    req = bare.request("req1", requester_slack_id="U0ALICE", context={"ref": "refs/heads/main"})
    created, value = bare.store.create(req, None, bare.t0, bare.event("request.created"))
    assert (created, value) == (True, "req1")
    got = bare.store.get("req1")
    assert got == req
    assert bare.r.zscore(keys.open_requests(), "req1") == bare.t0
    assert bare.r.zscore(keys.all_requests(), "req1") == bare.t0
    assert bare.due() == {"timeout:req1": bare.t0 + 30 * MIN, "slack:req1": bare.t0}
    assert bare.r.zrange(keys.channel_outbox("C0PROD"), 0, -1) == ["req1"]
    assert bare.kicks.calls == [], "the first post is left to the scheduler, which paces bursts"
    assert bare.outbox() == [{"body": {"event": "request.created"}, "patch": {}}]


def test_create_with_a_used_idempotency_key_returns_the_first_request_and_writes_nothing(bare):
    idem = ("jit:idem:web-ci:k1", "fingerprint-1")
    assert bare.store.create(bare.request("req1"), idem, bare.t0, bare.event("request.created")) == (True, "req1")
    again = bare.store.create(bare.request("req2"), ("jit:idem:web-ci:k1", "fp-2"), bare.t0, bare.event("x"))
    assert again == (False, "req1|fingerprint-1")
    assert bare.store.get("req2") is None
    assert bare.r.zrange(keys.all_requests(), 0, -1) == ["req1"]
    assert bare.events() == ["request.created"]
    assert 0 < bare.r.ttl("jit:idem:web-ci:k1") <= 86400


# ------------------------------------------------------------------ approve


def test_an_approval_below_the_threshold_is_recorded_and_updates_the_message(bare):
    bare.create("req1", approvals_required=2)
    t = bare.t0 + 5000
    out = bare.approve("req1", "U0LEAD1", t, required=2)
    assert (out.result, out.count) == ("recorded", 1)
    assert bare.status() == "pending"
    assert bare.approvals() == {"U0LEAD1": str(t)}
    assert bare.store.get("req1").approved_by == ["U0LEAD1"]
    assert bare.kicks.members == ["slack:req1"]
    assert bare.due()["timeout:req1"] == bare.t0 + 30 * MIN, "still pending: the timeout stays"
    given = bare.outbox()[-1]
    assert given == {"body": {"event": "approval.given"}, "patch": {"approvals": 1, "required": 2, "rule": RULE}}


def test_the_last_approval_approves_queues_the_grant_and_stops_the_pending_timers(bare):
    bare.create("req1", approvals_required=2)
    DueQueue(bare.r).schedule("remind:req1", bare.t0 + 15 * MIN)
    bare.approve("req1", "U0LEAD1", bare.t0 + 1000, required=2)
    bare.forget_effects()
    t = bare.t0 + 2000
    out = bare.approve("req1", "U0LEAD2", t, required=2)
    assert (out.result, out.count) == ("approved", 2)
    h = bare.hash()
    assert (h["status"], h["decided_by"], h["decided_ms"], h["approvals_required"]) == (
        "approved",
        "U0LEAD2",
        str(t),
        "2",
    )
    ((kicked, token),) = bare.kicks.calls
    assert kicked == ["grant:req1"]
    due = bare.due()
    assert "timeout:req1" not in due and "remind:req1" not in due
    # the message waits for the grant that follows, to show both in one update
    assert due["slack:req1"] == t + DECISION_MESSAGE_MS and "slack:req1" not in bare.claims()
    assert due["grant:req1"] == t + LEASE_MS, "kicked work comes back after its lease if its job is lost"
    assert bare.claims()["grant:req1"] == token, "the grant job runs under the claim it was kicked with"
    assert bare.events() == ["approval.given", "request.approved"]
    assert bare.outbox()[0]["patch"] == {"approvals": 2, "required": 2, "rule": RULE}


def test_the_same_approver_twice_is_a_duplicate_and_changes_nothing(bare):
    bare.create("req1", approvals_required=2)
    bare.approve("req1", "U0LEAD1", required=2)
    bare.forget_effects()
    before = bare.snapshot()
    assert bare.approve("req1", "U0LEAD1", bare.t0 + 3000, required=2).result == "duplicate"
    assert bare.snapshot() == before and bare.kicks.calls == []


def test_approvals_of_people_no_longer_approvers_do_not_count(bare):
    bare.create("req1", approvals_required=2)
    bare.approve("req1", "U0GONE", required=2)
    out = bare.approve("req1", "U0LEAD1", bare.t0 + 2000, required=2, discounted=["U0GONE"])
    assert (out.result, out.count) == ("recorded", 1)
    assert bare.status() == "pending"


def test_a_raised_threshold_applies_to_the_next_approval(bare):
    bare.create("req1", approvals_required=1)
    out = bare.approve("req1", "U0LEAD1", required=2)  # the policy now asks for two
    assert (out.result, out.count) == ("recorded", 1)
    assert bare.approve("req1", "U0LEAD2", bare.t0 + 2000, required=2).result == "approved"
    assert bare.hash()["approvals_required"] == "2"


def test_an_approval_at_the_pending_timeout_is_refused_as_timed_out(bare):
    bare.create("req1")
    before = bare.snapshot()
    out = bare.approve("req1", "U0LEAD1", bare.t0 + 30 * MIN)
    assert (out.result, out.status) == ("decided", "timed_out")
    assert bare.snapshot() == before, "no approval recorded once the timeout has come"


def test_a_change_is_published_so_long_polls_wake(bare):
    bare.create("req1", approvals_required=2)
    sub = bare.r.pubsub(ignore_subscribe_messages=True)
    sub.subscribe(keys.changed_channel())
    try:
        deadline = time.monotonic() + 5
        while sub.connection is None or not bare.r.pubsub_numsub(keys.changed_channel())[0][1]:
            assert time.monotonic() < deadline
            sub.get_message(timeout=0.05)
        bare.approve("req1", "U0LEAD1", required=2)
        message = None
        while message is None and time.monotonic() < deadline:
            message = sub.get_message(timeout=1)
        assert message is not None and message["data"] == "req1"
    finally:
        sub.close()


# ------------------------------------------------------------------ auto-approve


def test_auto_approval_counts_against_the_daily_cap_and_queues_the_grant(bare):
    bare.create("req1")
    out = bare.store.auto_approve("req1", "jit:auto:c", 2, "actions.deploy-prod.auto_approve", bare.t0, "{}")
    assert (out.result, out.count) == ("approved", 1)
    h = bare.hash()
    assert (h["status"], h["decided_by"], h["auto_rule"]) == ("approved", "auto", "actions.deploy-prod.auto_approve")
    assert bare.r.get("jit:auto:c") == "1" and 0 < bare.r.ttl("jit:auto:c") <= 2 * 86400
    assert bare.kicks.members == ["grant:req1"]
    assert "timeout:req1" not in bare.due()
    # the message (not posted yet here: due since the create) shows the approval when it is
    assert bare.due()["slack:req1"] <= bare.t0 + DECISION_MESSAGE_MS
    assert bare.outbox()[-1]["patch"] == {"count_today": 1}


def test_auto_approval_over_the_cap_leaves_the_request_to_humans(bare):
    bare.create("req1")
    bare.r.set("jit:auto:c", 2)
    before = bare.snapshot()
    out = bare.store.auto_approve("req1", "jit:auto:c", 2, "rule", bare.t0, bare.event("request.approved"))
    assert (out.result, out.count) == ("capped", 2)
    assert bare.snapshot() == before and bare.r.get("jit:auto:c") == "2"


# ------------------------------------------------------------------ break glass


def test_break_glass_approves_alone_cuts_the_ttl_and_owes_the_security_alert(bare):
    bare.create("req1", ttl=timedelta(hours=1), approvals_required=2)
    t = bare.t0 + 1000
    out = bare.store.break_glass("req1", "U0ONCALL", 600, "db is down, restoring", t, bare.event("request.approved"))
    assert (out.result, out.count) == ("approved", 600)
    h = bare.hash()
    assert (h["status"], h["decided_by"], h["ttl_s"], h["break_glass_asked_ttl_s"]) == (
        "approved",
        "U0ONCALL",
        "600",
        "3600",
    )
    assert h["break_glass_justification"] == "db is down, restoring"
    assert set(bare.approvals()) == {"U0ONCALL"}
    assert bare.kicks.members == ["grant:req1", "bgalert:req1"]
    assert bare.due()["slack:req1"] <= t + DECISION_MESSAGE_MS  # shown with the grant
    assert bare.r.zscore(keys.undelivered_alerts(), "bgalert:req1") == t
    assert bare.outbox()[-1]["patch"] == {"ttl_seconds": 600}


def test_break_glass_keeps_a_ttl_already_under_its_max(bare):
    bare.create("req1")  # 15 min asked
    out = bare.store.break_glass("req1", "U0ONCALL", 3600, "db is down, restoring", bare.t0, "{}")
    assert out.count == 900 and bare.hash()["ttl_s"] == "900"


def test_break_glass_after_the_pending_timeout_is_refused(bare):
    bare.create("req1")
    out = bare.store.break_glass("req1", "U0ONCALL", 600, "db is down", bare.t0 + 30 * MIN, "{}")
    assert (out.result, out.status) == ("decided", "timed_out")
    assert bare.status() == "pending"


def test_a_request_an_earlier_version_made_keeps_its_approvals_apart_and_they_still_count(bare):
    """Requests made before approvals moved into the request hash (still in Redis after an
    upgrade) keep them in a hash of their own: read, counted, never written, expired at the end."""
    bare.create("req1", approvals_required=3)
    bare.r.hset(keys.approvals("req1"), "U0LEAD1", bare.t0 + 500)
    assert bare.store.get("req1").approved_by == ["U0LEAD1"]
    assert bare.approve("req1", "U0LEAD1", required=3).result == "duplicate"
    assert (
        bare.store.approve(
            "req1",
            "U0LEAD2",
            bare.t0 + 1000,
            rules=[(RULE, 3, ["U0LEAD2"])],
            seen=[],
            rule=RULE,
            oncall=[],
            given="",
            approved="",
        ).result
        == "stale"
    ), "an approval the caller did not see"
    out = bare.approve("req1", "U0LEAD2", bare.t0 + 2000, required=3)
    assert (out.result, out.count) == ("recorded", 2)
    assert bare.store.get("req1").approved_by == ["U0LEAD1", "U0LEAD2"]
    assert bare.r.hgetall(keys.approvals("req1")) == {"U0LEAD1": str(bare.t0 + 500)}
    assert bare.store.close("req1", Status.DENIED, bare.t0 + 3000, {Status.PENDING}, "{}").ok
    assert 0 < bare.r.ttl(keys.approvals("req1")) <= RETENTION_S


def test_an_active_grant_is_one_compact_hash_and_its_credential(bare):
    """Besides its entries in the indexes and the due queue, an active grant keeps two keys: the
    request hash (its approvals included), every value within Redis's listpack limit so the hash
    stays compact (docs/performance.md), and the sealed credential."""
    bare.create("req1", approvals_required=2)
    bare.approve("req1", "U0LEAD1", required=2)
    assert bare.approve("req1", "U0LEAD2", bare.t0 + 2000, required=2).result == "approved"
    bare.grant("req1", bare.t0 + 3000)
    assert bare.status() == "active"
    assert sorted(k for k in bare.r.keys("*") if "req1" in k) == sorted([keys.request("req1"), keys.credential("req1")])
    assert bare.r.object("encoding", keys.request("req1")) == "listpack"
    assert set(bare.approvals()) == {"U0LEAD1", "U0LEAD2"}


# ------------------------------------------------------------------ close: deny, time out, cancel


def test_a_denial_ends_the_request_stops_its_timers_and_keeps_it_for_retention(bare):
    bare.create("req1")
    bare.approve("req1", "U0LEAD1", required=2)  # kept in the request hash: it expires with it
    bare.forget_effects()
    t = bare.t0 + 2000
    out = bare.store.close(
        "req1", Status.DENIED, t, {Status.PENDING}, bare.event("request.denied"), decided_by="U0LEAD2", deny_reason="no"
    )
    assert (out.result, out.status) == ("ok", "pending")
    h = bare.hash()
    assert (h["status"], h["decided_by"], h["deny_reason"], h["decided_ms"]) == ("denied", "U0LEAD2", "no", str(t))
    assert "timeout:req1" not in bare.due()
    assert bare.r.zscore(keys.open_requests(), "req1") is None
    assert 0 < bare.r.ttl(keys.request("req1")) <= RETENTION_S
    assert bare.store.get("req1").approved_by == ["U0LEAD1"]
    assert bare.kicks.members == ["slack:req1"]
    assert bare.events() == ["request.denied"]


def test_the_pending_timeout_is_never_early(bare):
    bare.create("req1")
    before = bare.snapshot()
    timeout_ms = bare.t0 + 30 * MIN
    early = bare.store.close("req1", Status.TIMED_OUT, timeout_ms - 1, {Status.PENDING}, "{}")
    assert early.result == "early"
    assert bare.snapshot() == before
    assert bare.store.close("req1", Status.TIMED_OUT, timeout_ms, {Status.PENDING}, "{}").ok
    assert bare.status() == "timed_out"


def test_cancelling_an_approved_request_before_its_grant_drops_the_grant(bare):
    rid = bare.in_status(Status.APPROVED)
    assert "grant:req1" in bare.due()
    assert _cancel(bare, rid, bare.t0 + 2000).ok
    assert "grant:req1" not in bare.due() and "grant:req1" not in bare.claims()
    assert "revoke_pending" not in bare.hash(), "nothing was issued: nothing to revoke"
    assert bare.kicks.members == ["slack:req1"]


def test_cancelling_after_a_failed_grant_attempt_revokes_what_it_may_have_left(bare):
    rid = bare.in_status(Status.APPROVED)
    token = bare.claims()["grant:req1"]
    assert bare.store.begin_grant(rid, token, bare.t0 + 2000).result == "ok"
    bare.store.grant_attempt_failed(rid, token, bare.t0 + 2500)
    assert _cancel(bare, rid, bare.t0 + 3000).ok
    assert bare.hash()["revoke_pending"] == "1"
    assert "revoke:req1" in bare.kicks.members


def test_a_grant_finishing_after_the_request_was_cancelled_is_revoked_at_once(bare):
    rid = bare.in_status(Status.APPROVED)
    token = bare.claims()["grant:req1"]
    assert bare.store.begin_grant(rid, token, bare.t0 + 2000).result == "ok"
    assert _cancel(bare, rid, bare.t0 + 2100).ok
    assert bare.hash()["revoke_pending"] == "1"
    assert "revoke:req1" not in bare.kicks.members, "the grant in flight owes the revoke when it ends"
    assert bare.claims()["grant:req1"] == token, "the running grant keeps its claim"
    bare.forget_effects()
    out = bare.store.finish_grant(
        rid, token, bare.t0 + 2200, bare.t0 + 20 * MIN, "blob", bare.t0 + 2200, issued="{}", late='{"event":"late"}'
    )
    assert (out.result, out.status) == ("late", "cancelled")
    assert bare.status() == "cancelled", "a late credential never makes the request active"
    assert bare.r.get(keys.credential(rid)) == "blob", "kept (encrypted) only to be revoked"
    assert "revoke:req1" in bare.kicks.members
    assert bare.events() == ["late"]


# ------------------------------------------------------------------ revoke


def test_revoking_an_active_grant_stops_its_expiry_and_queues_the_backend_revoke(bare):
    rid = bare.in_status(Status.ACTIVE)
    DueQueue(bare.r).schedule("warn:req1", bare.t0 + 10 * MIN)
    assert "expire:req1" in bare.due()
    t = bare.t0 + 5000
    out = bare.store.revoke(rid, "pipeline:web-ci", t, bare.event("grant.revoke_requested"))
    assert (out.result, out.status) == ("ok", "active")
    h = bare.hash()
    assert (h["status"], h["revoked_by"], h["revoked_ms"], h["revoke_pending"]) == (
        "revoked",
        "pipeline:web-ci",
        str(t),
        "1",
    )
    assert "expire:req1" not in bare.due() and "warn:req1" not in bare.due()
    assert bare.kicks.members == ["revoke:req1", "slack:req1"]
    assert bare.r.zscore(keys.open_requests(), rid) is None
    assert bare.events() == ["grant.revoke_requested"]


# ------------------------------------------------------------------ the grant: begin, finish, attempt failed, fail


def test_only_the_current_claim_may_begin_a_grant(bare):
    rid = bare.in_status(Status.APPROVED)
    before = bare.snapshot()
    assert bare.store.begin_grant(rid, "not-the-claim", bare.t0 + 2000).result == "stale"
    assert bare.snapshot() == before
    token = bare.claims()["grant:req1"]
    assert bare.store.begin_grant(rid, token, bare.t0 + 2000).result == "ok"
    h = bare.hash()
    assert (h["grant_inflight"], h["grant_attempted"]) == (token, "1")


def test_a_grant_job_after_the_request_ended_settles_the_attempt_that_died(bare):
    rid = bare.in_status(Status.APPROVED)
    first = bare.claims()["grant:req1"]
    bare.store.begin_grant(rid, first, bare.t0 + 2000)  # ... and the worker dies in the backend
    assert _cancel(bare, rid, bare.t0 + 3000).ok
    bare.forget_effects()
    claims = dict(DueQueue(bare.r).claim(bare.t0 + 60 * MIN))  # its lease ran out: claimed again
    second = claims["grant:req1"]
    assert second != first
    out = bare.store.begin_grant(rid, second, bare.t0 + 60 * MIN)
    assert (out.result, out.status) == ("settled", "cancelled")
    assert "grant_inflight" not in bare.hash()
    assert bare.hash()["revoke_pending"] == "1" and "revoke:req1" in bare.kicks.members


def test_a_grant_job_run_again_after_the_grant_was_issued_does_nothing(bare):
    rid = bare.in_status(Status.ACTIVE)
    token = bare.claims()["grant:req1"]  # the same job, delivered twice, before it was marked done
    before = bare.snapshot()
    out = bare.store.begin_grant(rid, token, bare.t0 + 3000)
    assert (out.result, out.status) == ("decided", "active")
    assert bare.snapshot() == before and bare.kicks.calls == []


def test_finishing_a_grant_activates_it_and_schedules_its_expiry_to_the_millisecond(bare):
    rid = bare.in_status(Status.APPROVED)
    token = bare.claims()["grant:req1"]
    bare.store.begin_grant(rid, token, bare.t0 + 2000)
    issued, expires = bare.t0 + 2100, bare.t0 + 2100 + 15 * MIN
    out = bare.store.finish_grant(rid, token, issued, expires, "blob", issued, issued='{"event":"ok"}', late="{}")
    assert (out.result, out.status) == ("ok", "approved")
    h = bare.hash()
    assert (h["status"], h["issued_ms"], h["expires_ms"]) == ("active", str(issued), str(expires))
    assert "grant_inflight" not in h
    assert bare.due()["expire:req1"] == expires
    assert bare.r.get(keys.credential(rid)) == "blob"
    pttl = bare.r.pttl(keys.credential(rid))
    assert 15 * MIN < pttl <= 15 * MIN + RETENTION_S * 1000, "the credential outlives its grant only as a backstop"
    # the message is owed, due with the approval's update if that has not run yet, else soon
    assert int(h["rev"]) > int(h.get("message_rev") or 0)
    assert bare.due()["slack:req1"] <= issued + DECISION_MESSAGE_MS and "slack:req1" not in bare.claims()
    assert bare.events() == ["ok"]


def test_a_grant_whose_claim_moved_on_records_nothing(bare):
    rid = bare.in_status(Status.APPROVED)
    token = bare.claims()["grant:req1"]
    bare.store.begin_grant(rid, token, bare.t0 + 2000)
    DueQueue(bare.r).schedule("grant:req1", bare.t0 + 3000)  # new work: the old claim is void
    before = bare.snapshot()
    out = bare.store.finish_grant(
        rid, token, bare.t0 + 4000, bare.t0 + 20 * MIN, "blob", bare.t0 + 4000, issued="{}", late="{}"
    )
    assert out.result == "stale"
    assert bare.snapshot() == before and bare.r.get(keys.credential(rid)) is None


def test_a_failed_attempt_ends_the_attempt_and_leaves_the_request_approved(bare):
    rid = bare.in_status(Status.APPROVED)
    token = bare.claims()["grant:req1"]
    bare.store.begin_grant(rid, token, bare.t0 + 2000)
    bare.store.grant_attempt_failed(rid, "someone-else", bare.t0 + 2500)
    assert bare.hash()["grant_inflight"] == token, "a stale job cannot end someone else's attempt"
    bare.store.grant_attempt_failed(rid, token, bare.t0 + 2500)
    h = bare.hash()
    assert h["status"] == "approved" and "grant_inflight" not in h and "revoke_pending" not in h
    assert bare.kicks.calls == [] and bare.outbox() == []


def test_a_failed_attempt_of_a_request_that_ended_meanwhile_owes_a_revoke(bare):
    rid = bare.in_status(Status.APPROVED)
    token = bare.claims()["grant:req1"]
    bare.store.begin_grant(rid, token, bare.t0 + 2000)
    _cancel(bare, rid, bare.t0 + 2100)
    bare.forget_effects()
    bare.store.grant_attempt_failed(rid, token, bare.t0 + 2500)
    assert bare.hash()["revoke_pending"] == "1" and bare.kicks.members == ["revoke:req1"]


def test_a_grant_that_kept_failing_fails_the_request_and_revokes_any_partial_grant(bare):
    rid = bare.in_status(Status.APPROVED)
    token = bare.claims()["grant:req1"]
    bare.store.begin_grant(rid, token, bare.t0 + 2000)
    bare.store.grant_attempt_failed(rid, token, bare.t0 + 2500)
    out = bare.store.fail(rid, "x" * 600, bare.t0 + 3000, bare.event("request.failed"))
    assert out.ok
    h = bare.hash()
    assert (h["status"], h["error"], h["decided_ms"]) == ("failed", "x" * 500, str(bare.t0 + 3000))
    assert "grant:req1" not in bare.due()
    assert h["revoke_pending"] == "1" and set(bare.kicks.members) == {"revoke:req1", "slack:req1"}
    assert bare.r.zscore(keys.open_requests(), rid) is None
    assert bare.events() == ["request.failed"]


# ------------------------------------------------------------------ the backend revoke, recorded once


def test_the_revoke_at_expiry_records_it_once_and_deletes_the_credential(bare):
    rid = bare.in_status(Status.ACTIVE)
    t = bare.t0 + 16 * MIN
    out = bare.store.mark_revoked(rid, t, bare.event("grant.revoked"))
    assert (out.result, out.status) == ("ok", "expired")
    h = bare.hash()
    assert (h["status"], h["revoked_by"], h["revoke_done_ms"]) == ("expired", "expiry", str(t))
    assert bare.r.get(keys.credential(rid)) is None
    assert "expire:req1" not in bare.due()
    assert bare.r.zscore(keys.open_requests(), rid) is None
    assert bare.outbox()[-1] == {"body": {"event": "grant.revoked"}, "patch": {"status": "expired"}}
    bare.forget_effects()
    again = bare.store.mark_revoked(rid, t + 1000, bare.event("grant.revoked"))
    assert again.result == "again"
    assert bare.hash()["revoke_done_ms"] == str(t) and bare.outbox() == []


def test_the_revoke_after_an_approver_revoked_keeps_the_status_and_clears_the_debt(bare):
    rid = bare.in_status(Status.REVOKED)
    assert bare.hash()["revoke_pending"] == "1"
    out = bare.store.mark_revoked(rid, bare.t0 + 5000, bare.event("grant.revoked"))
    assert (out.result, out.status) == ("ok", "revoked")
    h = bare.hash()
    assert h["status"] == "revoked" and "revoke_pending" not in h
    assert bare.r.get(keys.credential(rid)) is None
    assert bare.outbox()[-1]["patch"] == {"status": "revoked"}


def test_no_revoke_is_recorded_while_a_grant_is_in_flight(bare):
    rid = bare.in_status(Status.APPROVED)
    token = bare.claims()["grant:req1"]
    bare.store.begin_grant(rid, token, bare.t0 + 2000)
    bare.r.set(keys.credential(rid), "earlier-blob")
    before = bare.snapshot()
    out = bare.store.mark_revoked(rid, bare.t0 + 3000, bare.event("grant.revoked"))
    assert (out.result, out.status) == ("inflight", "approved")
    assert bare.snapshot() == before


def test_a_credential_left_by_a_vanished_request_is_deleted(bare):
    bare.r.set(keys.credential("gone1"), "blob")
    assert bare.store.mark_revoked("gone1", bare.t0, "{}").result == "missing"
    assert bare.r.get(keys.credential("gone1")) is None


# ------------------------------------------------------------------ reads


@pytest.mark.parametrize("rid", ["", "a" * 65, "a:b", "../x", "a b", None])
def test_a_malformed_id_reads_as_no_request(bare, rid):
    assert not valid_id(rid)
    assert bare.store.get(rid) is None and bare.store.fields(rid, "status") == {}
