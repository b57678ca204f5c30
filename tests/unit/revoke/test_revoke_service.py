"""bot/revoke/service.py: RevokeService.release / revoke_by_approver / time_out / expire / complete
as plain calls.

Access ends when the pipeline gives it back, an approver revokes it, the pending timeout or the
expiry comes — never early — and the backend revoke that follows is recorded exactly once."""

from __future__ import annotations

from datetime import timedelta

import pytest
from freezegun import freeze_time
from unit_support import ask, grant_claim

from bot.core import errors as E
from bot.core.clock import now
from bot.core.model import Status
from bot.request.service import FollowUp
from bot.store import keys
from bot.store.due import DueQueue

T0 = "2026-12-02 10:00:00"


def active(rt, backend, action: str = "read-secret") -> str:
    """read-secret (one approval, 10 min), approved and issued at T0."""
    with freeze_time(T0):
        rid = ask(rt, action)
        rt.decisions.approve(rid, "U0LEAD1")
        rt.grants.issue(rid, grant_claim(rt, rid), backend.backend_for)
    assert rt.store.get(rid).status == Status.ACTIVE
    return rid


def by_pipeline(rt, rid: str) -> FollowUp:
    return FollowUp(rt.store.get(rid), "request_token")


def events(rt, rid: str, name: str) -> list[dict]:
    return [e.body for e in rt.audit.entries_for_request(rid) if e.body["event"] == name]


# ------------------------------------------------------------------ people end access


@pytest.mark.parametrize("approve", [False, True])
def test_releasing_an_undecided_request_cancels_it(rt, approve):
    rid = ask(rt, "read-secret")
    if approve:
        rt.decisions.approve(rid, "U0LEAD1")
    req = rt.revokes.release(by_pipeline(rt, rid))
    assert (req.status, req.revoked_by) == (Status.CANCELLED, "pipeline:web-ci")
    assert DueQueue(rt.redis).score(f"grant:{rid}") is None, "no grant for a cancelled request"
    assert events(rt, rid, "request.cancelled")[0]["actor"] == "pipeline:web-ci"


def test_releasing_a_request_whose_pending_time_is_up_times_it_out(rt):
    """A DELETE after the pending timeout, before the timeout job ran: the request ends
    `timed_out` (as it would a moment later), not `cancelled`, and the answer says so."""
    with freeze_time("2026-12-02 10:00:00"):
        rid = ask(rt, "read-secret")  # 30 min pending timeout
    with freeze_time("2026-12-02 10:30:00.001"):
        req = rt.revokes.release(by_pipeline(rt, rid))
    assert req.status == Status.TIMED_OUT
    assert rt.store.get(rid).status == Status.TIMED_OUT


def test_releasing_an_active_grant_revokes_it_at_once_and_the_backend_follows(rt, backend):
    rid = active(rt, backend)
    req = rt.revokes.release(by_pipeline(rt, rid))
    assert (req.status, req.revoked_by, req.revoke_pending) == (Status.REVOKED, "pipeline:web-ci", True)
    assert DueQueue(rt.redis).score(f"expire:{rid}") is None
    assert DueQueue(rt.redis).score(f"revoke:{rid}") is not None
    rt.revokes.complete(rid, backend.backend_for)
    ((asked, credential),) = backend.revoked
    assert asked.id == rid and credential["password"] == "s3cr3t-pa55"
    req = rt.store.get(rid)
    assert req.status == Status.REVOKED and not req.revoke_pending and req.revoke_done_at is not None
    assert rt.store.credential_blob(rid) is None
    assert events(rt, rid, "grant.revoked")[0]["actor"] == "pipeline:web-ci"


def test_a_release_that_races_the_grant_still_ends_it(rt, backend):
    """The pipeline read its request `approved`, then the grant landed before its DELETE did: the
    DELETE revokes the fresh grant rather than answering 200 and leaving it active."""
    rid = ask(rt, "read-secret")
    rt.decisions.approve(rid, "U0LEAD1")
    seen = FollowUp(rt.store.get(rid), "request_token")  # approved, as the DELETE found it
    rt.grants.issue(rid, grant_claim(rt, rid), backend.backend_for)
    req = rt.revokes.release(seen)
    assert (req.status, req.revoked_by) == (Status.REVOKED, "pipeline:web-ci")


def test_releasing_a_finished_request_changes_nothing(rt):
    rid = ask(rt, "read-secret")
    rt.decisions.deny(rid, "U0LEAD1", "no")
    before = rt.redis.hgetall(keys.request(rid))
    assert rt.revokes.release(by_pipeline(rt, rid)).status == Status.DENIED
    assert rt.redis.hgetall(keys.request(rid)) == before


def test_only_an_approver_revokes_and_only_an_active_grant(rt, backend):
    rid = active(rt, backend)
    with pytest.raises(E.NotAnApprover):
        rt.revokes.revoke_by_approver(rid, "U0STRANGER")
    assert rt.store.get(rid).status == Status.ACTIVE
    req = rt.revokes.revoke_by_approver(rid, "U0ALICE")
    assert (req.status, req.revoked_by) == (Status.REVOKED, "U0ALICE")
    with pytest.raises(E.AlreadyDecided):
        rt.revokes.revoke_by_approver(rid, "U0LEAD1")
    pending = ask(rt, "read-secret")
    with pytest.raises(E.NotActive) as refused:
        rt.revokes.revoke_by_approver(pending, "U0LEAD1")
    assert str(refused.value) == "Only an active grant can be revoked; this request is pending."
    assert rt.store.get(pending).status == Status.PENDING


# ------------------------------------------------------------------ time ends access, never early


def test_the_pending_timeout_waits_for_its_moment(rt):
    with freeze_time(T0):
        rid = ask(rt, "read-secret")  # 30 min pending timeout
    with freeze_time("2026-12-02 10:29:59"):
        assert rt.revokes.time_out(rid) == 1000
        assert rt.store.get(rid).status == Status.PENDING
    with freeze_time("2026-12-02 10:30:00"):
        assert rt.revokes.time_out(rid) == 0
    req = rt.store.get(rid)
    assert req.status == Status.TIMED_OUT
    assert events(rt, rid, "request.timed_out")[0]["actor"] == "jit"


def test_a_decided_request_does_not_time_out(rt):
    with freeze_time(T0):
        rid = ask(rt, "read-secret")
        rt.decisions.approve(rid, "U0LEAD1")
    with freeze_time("2026-12-02 11:00:00"):
        assert rt.revokes.time_out(rid) == 0
    assert rt.store.get(rid).status == Status.APPROVED


def test_an_expiry_never_revokes_early(rt, backend):
    rid = active(rt, backend)  # expires at 10:10:00
    with freeze_time("2026-12-02 10:09:59.500"):
        assert rt.revokes.expire(rid, backend.backend_for) == 500
    assert backend.revoked == [] and rt.store.get(rid).status == Status.ACTIVE
    with freeze_time("2026-12-02 10:10:00.250"):
        assert rt.revokes.expire(rid, backend.backend_for) == 0
        late_by = now() - rt.store.get(rid).expires_at
    assert len(backend.revoked) == 1
    req = rt.store.get(rid)
    assert (req.status, req.revoked_by) == (Status.EXPIRED, "expiry")
    (revoked,) = events(rt, rid, "grant.revoked")
    assert revoked["actor"] == "expiry" and revoked["details"]["lateness_ms"] == late_by / timedelta(milliseconds=1)


def test_the_backend_revoke_is_done_and_recorded_once(rt, backend):
    rid = active(rt, backend)
    with freeze_time("2026-12-02 10:10:00"):
        rt.revokes.expire(rid, backend.backend_for)
        rt.revokes.expire(rid, backend.backend_for)  # the job, run again
        rt.revokes.complete(rid, backend.backend_for)
    assert len(backend.revoked) == 1
    assert len(events(rt, rid, "grant.revoked")) == 1


def test_a_failed_grant_attempt_is_cleaned_up_without_a_credential(rt, backend):
    rid = ask(rt, "read-secret")
    rt.decisions.approve(rid, "U0LEAD1")
    backend.fail_with = RuntimeError("half-made user")
    with pytest.raises(RuntimeError):
        rt.grants.issue(rid, grant_claim(rt, rid), backend.backend_for)
    backend.fail_with = None
    rt.revokes.release(by_pipeline(rt, rid))  # cancelled: what the attempt left is owed a revoke
    assert rt.store.get(rid).revoke_pending
    rt.revokes.complete(rid, backend.backend_for)
    ((_, credential),) = backend.revoked
    assert credential is None
    assert not rt.store.get(rid).revoke_pending
    assert "cleanup" in events(rt, rid, "grant.revoked")[0]["details"]


def test_a_failing_backend_revoke_records_nothing_and_stays_owed(rt, backend):
    rid = active(rt, backend)
    rt.revokes.revoke_by_approver(rid, "U0LEAD1")
    backend.fail_with = RuntimeError("target down")
    with pytest.raises(RuntimeError):
        rt.revokes.complete(rid, backend.backend_for)
    req = rt.store.get(rid)
    assert req.revoke_pending and req.revoke_done_at is None
    assert rt.store.credential_blob(rid) is not None, "kept until the target confirms"
    assert events(rt, rid, "grant.revoked") == []
