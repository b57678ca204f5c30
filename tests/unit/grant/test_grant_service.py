"""bot/grant/service.py: GrantService.issue and credential as plain calls.

The grant is fenced by the job's claim, issued for exactly the request's ttl from the moment it
is issued (never past its change window), stored encrypted, and read back only while active."""

from __future__ import annotations

from datetime import timedelta

import pytest
from freezegun import freeze_time
from unit_support import ask, grant_claim

from bot.core import errors as E
from bot.core.clock import now, to_ms
from bot.core.model import Status
from bot.request.service import FollowUp
from bot.store import keys
from bot.store.due import DueQueue


def approved(rt, action: str = "read-secret", **over) -> str:
    """read-secret: one approval, by U0LEAD1."""
    rid = ask(rt, action, **over)
    assert rt.decisions.approve(rid, "U0LEAD1").result == "approved"
    return rid


def issued_events(rt, rid: str) -> list[dict]:
    return [e.body for e in rt.audit.entries_for_request(rid) if e.body["event"] == "grant.issued"]


def test_an_approved_request_is_issued_for_its_ttl_from_the_moment_of_issue(rt, backend):
    rid = approved(rt)
    with freeze_time("2026-12-02 10:00:00"):
        t = now()
        rt.grants.issue(rid, grant_claim(rt, rid), backend.backend_for)
    (asked,) = backend.granted
    assert (asked.id, asked.action, asked.ttl_seconds) == (rid, "read-secret", 600)
    assert (asked.issued_at, asked.expires_at) == (t, t + timedelta(minutes=10))
    req = rt.store.get(rid)
    assert (req.status, req.issued_at, req.expires_at) == (Status.ACTIVE, t, t + timedelta(minutes=10))
    assert DueQueue(rt.redis).score(f"expire:{rid}") == to_ms(req.expires_at), "revoked at that millisecond"
    blob = rt.store.credential_blob(rid)
    assert "s3cr3t-pa55" not in blob, "stored encrypted"
    assert rt.vault.open(blob) == {"username": f"u-{rid}", "password": "s3cr3t-pa55"}
    (event,) = issued_events(rt, rid)
    assert event["details"]["ttl_seconds"] == 600 and event["details"]["backend"] == "recording"
    assert "s3cr3t-pa55" not in str(event)


def test_a_job_without_the_current_claim_never_calls_the_backend(rt, backend):
    rid = approved(rt)
    grant_claim(rt, rid)
    rt.grants.issue(rid, "an-old-claim", backend.backend_for)
    assert backend.granted == []
    assert rt.store.get(rid).status == Status.APPROVED


def test_a_grant_whose_claim_moved_on_while_the_backend_worked_is_not_recorded(rt, backend, monkeypatch):
    rid = approved(rt)
    token = grant_claim(rt, rid)
    real_grant = backend.grant

    def slow_grant(request):
        DueQueue(rt.redis).schedule(f"grant:{rid}", 0)  # meanwhile the item was handed out anew
        return real_grant(request)

    monkeypatch.setattr(backend, "grant", slow_grant)
    rt.grants.issue(rid, token, backend.backend_for)
    assert len(backend.granted) == 1
    req = rt.store.get(rid)
    assert req.status == Status.APPROVED and req.issued_at is None
    assert rt.store.credential_blob(rid) is None and issued_events(rt, rid) == []


def test_a_grant_job_run_twice_issues_once(rt, backend):
    rid = approved(rt)
    token = grant_claim(rt, rid)
    rt.grants.issue(rid, token, backend.backend_for)
    rt.grants.issue(rid, token, backend.backend_for)
    assert len(backend.granted) == 1 and len(issued_events(rt, rid)) == 1


def test_a_failing_backend_ends_the_attempt_and_leaves_the_request_to_a_retry(rt, backend):
    rid = approved(rt)
    backend.fail_with = RuntimeError("target down")
    with pytest.raises(RuntimeError):
        rt.grants.issue(rid, grant_claim(rt, rid), backend.backend_for)
    assert rt.store.get(rid).status == Status.APPROVED
    assert rt.store.fields(rid, "grant_inflight", "grant_attempted") == {"grant_attempted": "1"}
    backend.fail_with = None
    rt.grants.issue(rid, grant_claim(rt, rid, within_ms=3_600_000), backend.backend_for)  # its retry
    assert rt.store.get(rid).status == Status.ACTIVE


def test_a_request_that_ended_before_its_job_ran_is_not_issued(rt, backend):
    rid = approved(rt)
    token = grant_claim(rt, rid)
    rt.store.close(rid, Status.CANCELLED, to_ms(now()), {Status.APPROVED}, "")
    rt.grants.issue(rid, token, backend.backend_for)
    assert backend.granted == [] and rt.store.get(rid).status == Status.CANCELLED


def test_a_grant_is_cut_at_the_end_of_its_window(rrt, backend):
    with freeze_time("2026-12-02 17:30:00"):  # a Wednesday; office hours end at 18:00
        rid = ask(rrt, "office-hours", ttl="1h")
        rrt.decisions.approve(rid, "U0LEAD1")
        rrt.grants.issue(rid, grant_claim(rrt, rid), backend.backend_for)
        end = now().replace(hour=18, minute=0)
    assert backend.granted[0].expires_at == end and backend.granted[0].ttl_seconds == 1800
    assert rrt.store.get(rid).expires_at == end
    assert rrt.store.fields(rid, "cut_by_window") == {"cut_by_window": "1"}
    assert issued_events(rrt, rid)[0]["details"]["cut_by_window"] is True


def test_a_window_that_closed_before_the_grant_fails_it_without_calling_the_backend(rrt, backend):
    with freeze_time("2026-12-02 17:59:58"):
        rid = ask(rrt, "office-hours")
        rrt.decisions.approve(rid, "U0LEAD1")
    with freeze_time("2026-12-02 18:00:01"):
        rrt.grants.issue(rid, grant_claim(rrt, rid), backend.backend_for)
    assert backend.granted == []
    req = rrt.store.get(rid)
    assert req.status == Status.FAILED and "window" in req.error


def test_a_grant_whose_action_was_removed_fails(rt, backend, policy_file):
    rid = ask(rt, "quick")
    rt.decisions.approve(rid, "U0LEAD1")
    text = policy_file.read_text().replace("[deploy-prod, read-secret, quick]", "[deploy-prod, read-secret]")
    rt.set_policy(rt.parse_policy(text[: text.index("  quick:\n")]))
    rt.grants.issue(rid, grant_claim(rt, rid), backend.backend_for)
    assert backend.granted == []
    assert rt.store.get(rid).error == "the action was removed from the policy"


# ------------------------------------------------------------------ the credential, read back


def test_the_credential_is_read_only_while_the_grant_is_active(rt, backend):
    with freeze_time("2026-12-02 10:00:00"):
        rid = ask(rt, "read-secret")
        with pytest.raises(E.NotActive):
            rt.grants.credential(FollowUp(rt.store.get(rid), "request_token"))
        rt.decisions.approve(rid, "U0LEAD1")
        with pytest.raises(E.NotActive):
            rt.grants.credential(FollowUp(rt.store.get(rid), "request_token"))
        rt.grants.issue(rid, grant_claim(rt, rid), backend.backend_for)
        credential, req = rt.grants.credential(FollowUp(rt.store.get(rid), "request_token"))
    assert credential["password"] == "s3cr3t-pa55" and req.id == rid
    fetched = [e.body for e in rt.audit.entries_for_request(rid) if e.body["event"] == "credential.fetched"]
    assert fetched[0]["details"] == {"via": "request_token"} and fetched[0]["actor"] == "pipeline:web-ci"
    with freeze_time("2026-12-02 10:10:00"):  # its expiry, before any revoke job ran
        with pytest.raises(E.Gone):
            rt.grants.credential(FollowUp(rt.store.get(rid), "request_token"))


def test_no_credential_after_a_revoke(rt, backend):
    rid = approved(rt)
    rt.grants.issue(rid, grant_claim(rt, rid), backend.backend_for)
    rt.revokes.revoke_by_approver(rid, "U0LEAD1")
    with pytest.raises(E.Gone):
        rt.grants.credential(FollowUp(rt.store.get(rid), "request_token"))
    rt.redis.set(keys.credential(rid), rt.vault.seal({"password": "x"}))  # even if a blob lingered
    with pytest.raises(E.Gone):
        rt.grants.credential(FollowUp(rt.store.get(rid), "request_token"))
