"""RevokeService.complete and what the target saw: the backend's session summary is kept once,
sealed, and audited as `session.usage`; failing to keep it never stops the revoke."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time
from redis.exceptions import ConnectionError as RedisConnectionError
from unit_support import RecordingBackend, ask, grant_claim

from bot.core.model import Status
from bot.request.schemas import RequestBody
from bot.request.service import FollowUp
from bot.store import keys


class ObservingBackend(RecordingBackend):
    """Reports what it saw at revoke, echoing the credential's password (which must not stay)."""

    def revoke(self, request, credential):
        super().revoke(request, credential)
        return {"sessions": [{"client_addr": "10.0.0.5", "application_name": "psql"}], "echo": credential["password"]}


def active(rt, backend) -> str:
    rid = ask(rt, "read-secret")
    rt.decisions.approve(rid, "U0LEAD1")
    rt.grants.issue(rid, grant_claim(rt, rid), backend.backend_for)
    return rid


def events(rt, rid: str, name: str) -> list[dict]:
    return [e.body for e in rt.audit.entries_for_request(rid) if e.body["event"] == name]


def test_the_summary_is_kept_sealed_and_audited_once(rt):
    backend = ObservingBackend()
    rid = active(rt, backend)
    rt.revokes.release(FollowUp(rt.store.get(rid), "request_token"))
    rt.revokes.complete(rid, backend.backend_for)
    (usage,) = events(rt, rid, "session.usage")
    assert usage["details"]["sessions"] == 1 and usage["details"]["backend"] == "recording"
    assert "s3cr3t-pa55" not in rt.redis.get(keys.usage(rid))
    assert rt.usage.summary(rid)["echo"] == "***"
    # the same revoke again (a retried job after a crash): nothing recorded twice
    rt.store.set_fields(rid, revoke_pending="1")
    rt.redis.set(keys.credential(rid), rt.vault.seal({"password": "s3cr3t-pa55"}))
    rt.revokes.complete(rid, backend.backend_for)
    assert len(backend.revoked) == 2 and len(events(rt, rid, "session.usage")) == 1


def test_a_failure_to_keep_the_summary_does_not_stop_the_revoke(rt, monkeypatch):
    backend = ObservingBackend()
    rid = active(rt, backend)
    rt.revokes.release(FollowUp(rt.store.get(rid), "request_token"))

    def broken(*a, **kw):
        raise RedisConnectionError("usage store unreachable")

    monkeypatch.setattr(rt.usage.store, "record", broken)
    rt.revokes.complete(rid, backend.backend_for)
    req = rt.store.get(rid)
    assert req.status == Status.REVOKED and req.revoke_done_at is not None and not req.revoke_pending
    assert events(rt, rid, "grant.revoked") and not events(rt, rid, "session.usage")


@pytest.mark.parametrize("observed", [None, "not a summary", 42])
def test_a_backend_with_nothing_to_report_records_no_usage(rt, observed):
    class Quiet(RecordingBackend):
        def revoke(self, request, credential):
            super().revoke(request, credential)
            return observed

    backend = Quiet()
    rid = active(rt, backend)
    rt.revokes.release(FollowUp(rt.store.get(rid), "request_token"))
    rt.revokes.complete(rid, backend.backend_for)
    assert rt.store.get(rid).revoke_done_at is not None
    assert not events(rt, rid, "session.usage")


def test_a_batch_of_expiries_chains_each_usage_before_its_revoke_and_leaves_nothing_unchained(rt):
    backend = ObservingBackend()
    ids = []
    for i in range(4):  # one grant per CI run: a pipeline asking again for a grant it holds gets that one back
        run = {"context": {"repository": "acme/web", "run_id": str(1000 + i), "run_attempt": "1"}}
        rid = rt.requests.create("web-ci", RequestBody(action="read-secret", reason=f"batch {i}"), verified=run)
        rid = rid.request.id
        ids.append(rid)
        rt.decisions.approve(rid, "U0LEAD1")
        rt.grants.issue(rid, grant_claim(rt, rid), backend.backend_for)
    with freeze_time(datetime.now(UTC) + timedelta(hours=2)):
        assert rt.revokes.expire_many(ids, backend.backend_for) == dict.fromkeys(ids, 0)
    assert rt.audit.pending() == 0, "the batch's own record chained every event it wrote"
    for rid in ids:
        names = [e.body["event"] for e in rt.audit.entries_for_request(rid)]
        assert names[-2:] == ["session.usage", "grant.revoked"], names
    assert rt.audit.verify()[1] is None
