"""Helpers of the unit tests (tests/unit/conftest.py puts this folder on the path): a Store with
its kicks and audit outbox in plain view, requests driven into any status by real transitions, a
grant backend that records its calls, and the few steps the service tests share."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, parse_qsl

import redis as redislib
from redis_state import stored_approvals
from slack_bolt import BoltContext

from bot.core.clock import from_ms, now_ms
from bot.core.model import AccessRequest, Status
from bot.core.ports import GrantRequest
from bot.request.schemas import RequestBody
from bot.store import keys
from bot.store.due import DueQueue
from bot.store.requests import Store

#: An action only grantable during office hours (UTC), for the window rules.
OFFICE_HOURS = f"""  office-hours:
    description: Only during office hours
    windows: ["mon-fri 09:00-18:00 UTC"]
    approvers: [U0LEAD1, U0LEAD2]
    ttl: {{default: 1h, max: 2h}}
    pending_timeout: 24h
    grant:
      type: exec
      grant_command: ["{sys.executable}", "-c", "pass"]
      revoke_command: ["{sys.executable}", "-c", "pass"]
"""


#: The one approval rule a bare request has (what `approvers` + `approvals_required` become).
RULE = "actions.deploy-prod.approvers"


class KickLog:
    """The store's Effects: records which due members a transition handed to a job, and under
    which claim token (the RQ dispatcher would enqueue them)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], str]] = []

    def kick(self, members: list[str], token: str) -> None:
        self.calls.append((list(members), token))

    @property
    def members(self) -> list[str]:
        return [m for ms, _ in self.calls for m in ms]

    def token(self, member: str) -> str:
        """The claim token of the last kick of `member`."""
        found = [t for ms, t in self.calls if member in ms]
        assert found, f"{member} was never kicked"
        return found[-1]

    def clear(self) -> None:
        self.calls.clear()


class HeldOutbox:
    """The audit side of the Store's contract, minus chaining: what a transition pushes stays in
    the outbox list, where a test reads it. Event bodies are plain JSON naming the event."""

    def event_body(self, event: str, **kw: Any) -> str:
        return json.dumps({"event": event, **{k: v for k, v in kw.items() if v is not None}})

    def flush(self) -> int:
        return 0

    def flush_soon(self) -> None:
        return None


@dataclass
class Bare:
    """A Store over the throwaway Redis, with the clock of its calls in the test's hands."""

    r: redislib.Redis
    store: Store
    kicks: KickLog
    outbox_events: HeldOutbox
    t0: int = field(default_factory=now_ms)

    # ------------------------------------------------------------- building requests

    def request(self, rid: str = "req1", **over: Any) -> AccessRequest:
        fields = {
            "id": rid,
            "action": "deploy-prod",
            "pipeline": "web-ci",
            "reason": "release 4.2",
            "ttl": timedelta(minutes=15),
            "status": Status.PENDING,
            "created_at": from_ms(self.t0),
            "pending_until": from_ms(self.t0 + 30 * 60_000),
            "approvals_required": 1,
            "channel": "C0PROD",
        }
        fields.update(over)
        return AccessRequest(**fields)

    def event(self, name: str) -> str:
        return self.outbox_events.event_body(name)

    def create(self, rid: str = "req1", **over: Any) -> str:
        created, _ = self.store.create(self.request(rid, **over), None, self.t0, self.event("request.created"))
        assert created
        return rid

    def in_status(self, status: Status, rid: str = "req1") -> str:
        """A request brought to `status` by the real transitions, with the outbox, the kicks and
        the due queue's wake list cleared afterwards (the due queue itself is left as it is)."""
        self.create(rid)
        t = self.t0 + 1000
        if status in (Status.APPROVED, Status.ACTIVE, Status.EXPIRED, Status.REVOKED, Status.FAILED):
            assert self.approve(rid, "U0LEAD1", t).result == "approved"
        if status in (Status.ACTIVE, Status.EXPIRED, Status.REVOKED):
            self.grant(rid, t)
        if status == Status.EXPIRED:
            assert self.store.mark_revoked(rid, t + 15 * 60_000, self.event("grant.revoked")).status == "expired"
        elif status == Status.REVOKED:
            assert self.store.revoke(rid, "U0LEAD1", t, self.event("grant.revoke_requested")).ok
        elif status == Status.FAILED:
            assert self.store.fail(rid, "target down", t, self.event("request.failed")).ok
        elif status in (Status.DENIED, Status.CANCELLED):
            assert self.store.close(rid, status, t, {Status.PENDING}, self.event(f"request.{status}")).ok
        elif status == Status.TIMED_OUT:
            late = self.t0 + 30 * 60_000
            assert self.store.close(rid, status, late, {Status.PENDING}, self.event("request.timed_out")).ok
        assert self.status(rid) == status
        self.forget_effects()
        return rid

    def approve(self, rid: str, user: str, t: int | None = None, required: int = 1, discounted=()):
        """`user` approves under one rule needing `required` people; approvals by `discounted`
        people (removed from the policy) no longer count. The matching is what the decision
        service computes for a single rule: the people already counted, then the clicker."""
        req = self.store.get(rid)
        seen = sorted(req.approved_by) if req is not None else []
        others = [u for u in seen if u != user and u not in discounted][: required - 1]
        return self.store.approve(
            rid,
            user,
            self.t0 + 1000 if t is None else t,
            rules=[(RULE, required, [*others, user])],
            seen=seen,
            rule=RULE,
            oncall=[],
            given=self.event("approval.given"),
            approved=self.event("request.approved"),
        )

    def grant(self, rid: str, t: int, ttl_ms: int = 15 * 60_000):
        """The grant job, holding the claim the approval kicked: begin, then finish."""
        token = self.kicks.token(f"grant:{rid}")
        assert self.store.begin_grant(rid, token, t).result == "ok"
        return self.store.finish_grant(
            rid,
            token,
            t,
            t + ttl_ms,
            "sealed-credential",
            t,
            issued=self.event("grant.issued"),
            late=self.event("grant.issued.late"),
        )

    def forget_effects(self) -> None:
        self.kicks.clear()
        self.r.delete(keys.audit_outbox(), keys.due_wake())

    # ------------------------------------------------------------- reading what happened

    def status(self, rid: str = "req1") -> str | None:
        return self.r.hget(keys.request(rid), "status")

    def hash(self, rid: str = "req1") -> dict[str, str]:
        return self.r.hgetall(keys.request(rid))

    def approvals(self, rid: str = "req1") -> dict[str, str]:
        """user → approval time (ms), as the request hash keeps them."""
        return stored_approvals(self.r, rid)

    def outbox(self) -> list[dict[str, Any]]:
        """The audit outbox: [{"body": {...}, "patch": {...}}], oldest first."""
        items = [json.loads(raw) for raw in self.r.lrange(keys.audit_outbox(), 0, -1)]
        for item in items:
            if item["patch"] == []:  # cjson encodes an empty table as []
                item["patch"] = {}
        return items

    def events(self) -> list[str]:
        return [item["body"]["event"] for item in self.outbox()]

    def due(self) -> dict[str, int]:
        return {m: int(s) for m, s in self.r.zrange(keys.due(), 0, -1, withscores=True)}

    def claims(self) -> dict[str, str]:
        return self.r.hgetall(keys.due_claims())

    def snapshot(self, rid: str = "req1") -> dict[str, Any]:
        """Everything a transition may touch, to show that a refused one touched nothing."""
        return {
            "request": self.hash(rid),
            "approvals": self.r.hgetall(keys.approvals(rid)),
            "credential": self.r.get(keys.credential(rid)),
            "open": self.r.zscore(keys.open_requests(), rid),
            "due": self.due(),
            "claims": self.claims(),
            "outbox": self.r.lrange(keys.audit_outbox(), 0, -1),
            # when it expires, not how long is left (a TTL in seconds ticks between two snapshots)
            "expires": self.r.execute_command("EXPIRETIME", keys.request(rid)),
        }


class RecordingBackend:
    """A grant backend that records what it was asked (and can be told to fail)."""

    type = "recording"
    enforces_expiry = False
    config = None

    def __init__(self) -> None:
        self.granted: list[GrantRequest] = []
        self.revoked: list[tuple[GrantRequest, dict[str, Any] | None]] = []
        self.fail_with: Exception | None = None

    def grant(self, request: GrantRequest) -> dict[str, Any]:
        self.granted.append(request)
        if self.fail_with is not None:
            raise self.fail_with
        return {"username": f"u-{request.id}", "password": "s3cr3t-pa55"}

    def revoke(self, request: GrantRequest, credential: dict[str, Any] | None) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.revoked.append((request, credential))

    def backend_for(self, action: str, policy_sha256: str | None = None) -> RecordingBackend:
        return self


def ask(rt, action: str = "deploy-prod", pipeline: str = "web-ci", **over: Any) -> str:
    """A pipeline asks (RequestService.create); returns the request id."""
    body = RequestBody(action=action, reason=over.pop("reason", "release 4.2"), **over)
    return rt.requests.create(pipeline, body).request.id


def grant_claim(rt, rid: str, within_ms: int = 60_000) -> str:
    """Claim the request's `grant:` item as the scheduler would (counting as due whatever is due
    within `within_ms`); returns the claim token."""
    claims = dict(DueQueue(rt.redis).claim(now_ms() + within_ms))
    assert f"grant:{rid}" in claims, "no grant was due"
    return claims[f"grant:{rid}"]


# ------------------------------------------------------------------ listeners: what Slack sends, what jit says


def interaction(built: tuple[bytes, str]) -> dict[str, Any]:
    """The `body` Bolt hands a listener for an interaction (form field `payload=<json>`)."""
    raw, _ = built
    return json.loads(parse_qs(raw.decode())["payload"][0])


def command(built: tuple[bytes, str]) -> dict[str, str]:
    """The `command` Bolt hands a slash-command listener (a plain urlencoded form)."""
    raw, _ = built
    return dict(parse_qsl(raw.decode()))


def event(built: tuple[bytes, str]) -> dict[str, Any]:
    """The `event` Bolt hands an Events API listener."""
    raw, _ = built
    return json.loads(raw)["event"]


def context(rt) -> BoltContext:
    """Bolt's context as jit's middleware leaves it: the process's parts under "jit"."""
    return BoltContext({"jit": rt})


def told(rt) -> list[dict[str, Any]]:
    """The private notes owed to people (ephemeral messages queued for a worker), oldest first."""
    members = rt.redis.zrange(keys.due(), 0, -1)
    notes = [rt.notices.payload(m.partition(":")[2]) for m in members if m.startswith("notice:")]
    return sorted((n for n in notes if n and n.get("user")), key=lambda n: n["owed_ms"])


def block_text(blocks: list[dict[str, Any]]) -> str:
    """Every text in Block Kit blocks, one per line (what a person reads)."""
    out: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("text"), str):
                out.append(node["text"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(blocks)
    return "\n".join(out)
