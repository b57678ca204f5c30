"""Property-based: the request lifecycle's invariants hold whatever happens in whatever order.

Hypothesis drives real transitions against a real Redis — create, approve, deny, cancel, revoke,
expire, time out, grant jobs (succeeding, failing, dying half-way, or interrupted by a second
worker holding a newer claim or by the pipeline cancelling while the backend works) — and checks
after every step and at the end:

* at most one credential is issued per request: the backend is never asked to grant while
  another grant of the same request is running, and `grant.issued` is recorded at most once;
* every credential the backend issued is revoked in the end (everything drained, time past
  every expiry);
* no transition out of a final status;
* every transition is in the audit trail (each status a request reached has its event).
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from typing import Any

import pytest
import redis as redislib
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from support import SECRET_KEY, policy_text

from bot.core.clock import now_ms
from bot.core.model import FINAL, Status
from bot.store import keys
from bot.store.due import DueQueue

#: The audit event that records reaching each status.
STATUS_EVENTS = {
    Status.PENDING: {"request.created"},
    Status.APPROVED: {"request.approved"},
    Status.ACTIVE: {"grant.issued"},
    Status.DENIED: {"request.denied"},
    Status.CANCELLED: {"request.cancelled"},
    Status.TIMED_OUT: {"request.timed_out"},
    Status.FAILED: {"request.failed"},
    Status.REVOKED: {"grant.revoke_requested"},
    Status.EXPIRED: {"grant.revoked"},
}


#: Due work that changes access (Slack notes are not part of these invariants).
ACCESS_KINDS = ("grant", "revoke", "expire", "timeout")


class Crash(BaseException):
    """The worker dies at this point of the job (its except clauses never run)."""


class FakeBackend:
    """Records what the target would hold. `hooks` run inside grant(), while it 'works'."""

    type = "fake"
    enforces_expiry = False
    config = None

    def __init__(self) -> None:
        self.live: dict[str, int] = defaultdict(int)  # request id → identities alive at the target
        self.granting: dict[str, int] = defaultdict(int)  # grant calls in progress
        self.grant_calls: dict[str, int] = defaultdict(int)
        self.overlaps: list[str] = []
        self.lapsed: set[str] = set()  # requests whose grant lease lapsed mid-call (overlap expected)
        self.fail_grant = False
        self.fail_revoke = False
        self.during_grant: list = []

    def grant(self, req) -> dict[str, Any]:
        if self.granting[req.id] and req.id not in self.lapsed:
            self.overlaps.append(req.id)
        self.granting[req.id] += 1
        try:
            self.grant_calls[req.id] += 1
            while self.during_grant:
                self.during_grant.pop(0)()
            if self.fail_grant:
                raise RuntimeError("target down")
            self.live[req.id] = 1  # one identity per request: a second grant replaces it
            return {"username": f"u-{req.id}", "password": "s3cr3t"}
        finally:
            self.granting[req.id] -= 1

    def revoke(self, req, credential) -> None:
        if self.fail_revoke:
            raise RuntimeError("target down")
        self.live[req.id] = 0


@pytest.fixture(scope="module")
def machine_runtime(redis_server, tmp_path_factory):
    from bot.settings import load_settings
    from bot.wiring import build

    d = tmp_path_factory.mktemp("invariants")
    policy = d / "jit-policy.yaml"
    policy.write_text(policy_text(str(d)))
    env = {
        "REDIS_URL": redis_server.url,
        "SLACK_BOT_TOKEN": "xoxb-test",
        "SLACK_SIGNING_SECRET": "test-signing-secret",
        "SLACK_API_URL": "http://127.0.0.1:9/api/",
        "JIT_POLICY_FILE": str(policy),
        "JIT_SECRET_KEY": SECRET_KEY,
        "JIT_GRANT_MAX_ATTEMPTS": "3",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    rt = build(load_settings())
    backend = FakeBackend()
    rt.backend_for = lambda action, sha=None: backend  # type: ignore[method-assign]
    rt.directory.members = lambda group: {"U0LEAD3", "U0LEAD4"} if group == "S0PRODLEADS" else set()  # type: ignore[method-assign]
    yield rt, backend
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


class Lifecycle(RuleBasedStateMachine):
    rt: Any = None
    backend: FakeBackend | None = None

    def __init__(self) -> None:
        super().__init__()
        self.rids: list[str] = []
        self.seen: dict[str, list[str]] = defaultdict(list)
        self.due = DueQueue(self.rt.redis)

    @initialize()
    def fresh(self) -> None:
        redislib.Redis.from_url(self.rt.settings.redis_url).flushall()  # the suite's own server
        b = self.backend
        b.live.clear(), b.granting.clear(), b.grant_calls.clear(), b.overlaps.clear(), b.lapsed.clear()
        b.fail_grant = b.fail_revoke = False
        b.during_grant.clear()

    # ------------------------------------------------------------------ pipelines and people

    @rule(action=st.sampled_from(["read-secret", "deploy-prod"]))
    def create(self, action: str) -> None:
        from bot.request.schemas import RequestBody

        body = RequestBody.model_validate({"action": action, "reason": "property"})
        self.rids.append(self.rt.requests.create("web-ci", body).request.id)

    def _pick(self, data) -> str:
        return data.draw(st.sampled_from(self.rids))

    @precondition(lambda self: self.rids)
    @rule(data=st.data(), user=st.sampled_from(["U0LEAD1", "U0LEAD2", "U0ALICE", "U0LEAD3"]))
    def approve(self, data, user: str) -> None:
        self._quietly(self.rt.decisions.approve, self._pick(data), user)

    # Ending a request early is one step where a grant takes several: these act one time in
    # four, so that requests live long enough to reach their grants.
    @precondition(lambda self: self.rids)
    @rule(data=st.data(), act=st.integers(0, 3))
    def deny(self, data, act: int) -> None:
        if act == 0:
            self._quietly(self.rt.decisions.deny, self._pick(data), "U0LEAD1", "no")

    @precondition(lambda self: self.rids)
    @rule(data=st.data(), act=st.integers(0, 3))
    def cancel(self, data, act: int) -> None:
        if act == 0:
            self._cancel(self._pick(data))

    def _cancel(self, rid: str) -> None:
        from bot.request.service import FollowUp

        req = self.rt.store.get(rid)
        if req is not None:
            self._quietly(self.rt.revokes.release, FollowUp(req, "request_token"))

    @precondition(lambda self: self.rids)
    @rule(data=st.data(), act=st.integers(0, 1))
    def revoke(self, data, act: int) -> None:
        if act:
            return
        self._quietly(self.rt.revokes.revoke_by_approver, self._pick(data), "U0LEAD1")

    @precondition(lambda self: self.rids)
    @rule(data=st.data(), act=st.integers(0, 3))
    def time_passes(self, data, act: int) -> None:
        """The request's pending timeout or its grant's expiry arrives."""
        if act:
            return
        rid = self._pick(data)
        r = self.rt.redis
        past = now_ms() - 1
        status = r.hget(keys.request(rid), "status")
        if status == "pending":
            r.hset(keys.request(rid), "pending_until_ms", past)
            self.due.schedule(f"timeout:{rid}", past)
        elif status == "active":
            r.hset(keys.request(rid), "expires_ms", past)
            self.due.schedule(f"expire:{rid}", past)

    @rule(grant=st.booleans(), revoke=st.booleans())
    def target_health(self, grant: bool, revoke: bool) -> None:
        self.backend.fail_grant, self.backend.fail_revoke = grant, revoke

    # ------------------------------------------------------------------ workers

    def _claim(self, member: str) -> str:
        """The scheduler claims `member` as it would once its time (or its lease) has come."""
        token = f"t{self.rt.redis.incr(keys.due_claim_seq())}"
        self.rt.redis.zadd(keys.due(), {member: now_ms() + 10_000})
        self.rt.redis.hset(keys.due_claims(), member, token)
        return token

    def _access_work(self) -> list[str]:
        return [m for m in self.rt.redis.zrange(keys.due(), 0, -1) if m.split(":")[0] in ACCESS_KINDS]

    @precondition(lambda self: self._access_work())
    @rule(
        kind=st.sampled_from(ACCESS_KINDS),
        interference=st.sampled_from(["none", "cancel", "second_worker", "crash_after_backend", "crash_before"]),
        data=st.data(),
    )
    def a_worker_runs_due_work(self, kind: str, interference: str, data) -> None:
        """A worker claims one item (whatever its lease said: time jumps) and runs it; for a
        grant, something may happen while its backend call runs."""
        from workers import jobs

        work = self._access_work()
        member = data.draw(st.sampled_from([m for m in work if m.startswith(kind + ":")] or work))
        token = self._claim(member)
        rid = member.partition(":")[2]
        if interference == "crash_before":
            return  # claimed, then the worker died before starting: the lease brings it back
        if member.startswith("grant:"):
            if interference == "cancel":
                self.backend.during_grant.append(lambda: self._cancel(rid))
            elif interference == "second_worker":
                # The first worker's lease lapsed while its backend call ran (it could not reach
                # Redis to extend it): another worker claims the item and runs it. Both call the
                # backend — nothing can stop a worker that cannot hear it lost its claim — but
                # only the current claim's result is recorded.
                self.backend.lapsed.add(rid)
                self.backend.during_grant.append(lambda: jobs.run_due(self.rt, member, self._claim(member)))
            elif interference == "crash_after_backend":
                real = self.rt.store.finish_grant

                def crash(*a, **k):
                    raise Crash()

                self.rt.store.finish_grant = crash
                try:
                    jobs.run_due(self.rt, member, token)
                except Crash:
                    pass
                finally:
                    self.rt.store.finish_grant = real
                return
        try:
            jobs.run_due(self.rt, member, token)
        finally:
            self.backend.during_grant.clear()

    @precondition(lambda self: any(m.startswith("grant:") for m in self._access_work()))
    @rule(data=st.data())
    def a_stale_copy_of_a_grant_job_runs_late(self, data) -> None:
        """A grant job waited in RQ past its lease; the item was handed out again and the new
        copy ran. The old copy then runs: it must not call the backend (fencing)."""
        from workers import jobs

        member = data.draw(st.sampled_from([m for m in self._access_work() if m.startswith("grant:")]))
        old = self._claim(member)
        jobs.run_due(self.rt, member, self._claim(member))
        calls = sum(self.backend.grant_calls.values())
        jobs.run_due(self.rt, member, old)
        assert sum(self.backend.grant_calls.values()) == calls, "a stale grant job called the backend"

    # ------------------------------------------------------------------ invariants

    @invariant()
    def statuses_only_move_forward_and_are_audited(self) -> None:
        for req in self.rt.store.get_many(self.rids):
            history = self.seen[req.id]
            if history and history[-1] != req.status:
                assert history[-1] not in FINAL, f"{req.id} left final status {history[-1]} for {req.status}"
            if not history or history[-1] != req.status:
                history.append(req.status)
        self.rt.audit.flush()
        for rid, history in self.seen.items():
            events = {e.body["event"] for e in self.rt.audit.entries_for_request(rid, limit=500)}
            for status in history:
                assert STATUS_EVENTS[Status(status)] & events, f"{rid}: reached {status} without its audit event"

    @invariant()
    def at_most_one_grant_at_a_time_and_one_issued(self) -> None:
        assert not self.backend.overlaps, f"two grants ran at once for {self.backend.overlaps}"
        self.rt.audit.flush()
        for rid in self.rids:
            issued = [
                e
                for e in self.rt.audit.entries_for_request(rid, limit=500)
                if e.body["event"] == "grant.issued" and e.body["outcome"] == "ok"
            ]
            assert len(issued) <= 1, f"{rid} was issued {len(issued)} credentials"

    def teardown(self) -> None:
        """Everything drains with a healthy target and time past every expiry: nothing lives on."""
        from workers import jobs

        if self.rt is None or not self.rids:
            return
        self.backend.fail_grant = self.backend.fail_revoke = False
        r = self.rt.redis
        for _ in range(200):
            for rid in self.rids:
                if r.hget(keys.request(rid), "status") == "active":
                    r.hset(keys.request(rid), "expires_ms", now_ms() - 1)
                    self.due.schedule(f"expire:{rid}", now_ms() - 1)
                if r.hget(keys.request(rid), "status") == "pending":
                    r.hset(keys.request(rid), "pending_until_ms", now_ms() - 1)
                    self.due.schedule(f"timeout:{rid}", now_ms() - 1)
            work = self._access_work()
            if not work:
                break
            for m in work:
                jobs.run_due(self.rt, m, self._claim(m))
        alive = {rid: n for rid, n in self.backend.live.items() if n}
        assert not alive, f"credentials outlived their requests: {alive}"
        for req in self.rt.store.get_many(self.rids):
            assert req.status in FINAL, f"{req.id} still {req.status}"
            assert not req.revoke_pending, f"{req.id} still owes a revoke"
        self.statuses_only_move_forward_and_are_audited()

    @staticmethod
    def _quietly(fn, *args) -> None:
        from bot.core.errors import JitError

        try:
            fn(*args)
        except JitError:
            pass


def test_request_lifecycle_invariants(machine_runtime):
    rt, backend = machine_runtime
    Lifecycle.rt, Lifecycle.backend = rt, backend
    lock = threading.Lock()  # one machine at a time: they share the Redis server
    with lock:
        run = Lifecycle.TestCase
        run.settings = settings(
            max_examples=int(os.environ.get("JIT_PROPERTY_EXAMPLES", "60")),
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        run().runTest()
