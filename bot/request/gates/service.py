"""A held deployment becomes a jit request through the normal RequestService (policy, windows,
approvers, auto-approval all apply), or is refused with the reason; a cancelled run cancels it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from bot.core import errors as E
from bot.core.clock import now_ms
from bot.core.gates import BINDING, GITHUB, TITLE, run_group, run_key
from bot.core.identity import encodable
from bot.core.model import OPEN, AccessRequest
from bot.request.schemas import MAX_REASON, RequestBody
from bot.request.service import FollowUp, RequestService
from bot.store.gates import GateRecord, GateStore

#: A held deployment with neither a request nor a refusal this long after it arrived (the process
#: died in between) is rejected by its watchdog rather than left waiting.
WATCHDOG_MS = 60_000
#: Longest context value taken from a platform.
MAX_VALUE = 200


class Releases(Protocol):
    """Ending a request early (bot/revoke's RevokeService, handed in by the edge)."""

    def release(self, follow_up: FollowUp) -> AccessRequest: ...


@dataclass(frozen=True)
class HeldDeployment:
    """A deployment a platform holds for jit, as its webhook and API describe it. `context` is what
    the platform vouches for (the request's verified context, binding included); `target` is where
    the answer goes."""

    platform: str
    gate_id: str
    place: str  # repository (GitHub) or project path (GitLab)
    environment: str
    reason: str
    requested_by: str | None
    context: dict[str, str] = field(default_factory=dict)
    target: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Opened:
    gate_id: str
    request_id: str | None = None
    status: str | None = None
    refused: str | None = None
    known: bool = False  # delivered before: nothing new

    def body(self) -> dict[str, Any]:
        """The webhook's answer: the gate, its request and status, or why it was refused."""
        out = {"gate": self.gate_id, "request": self.request_id, "status": self.status, "refused": self.refused}
        return {k: v for k, v in out.items() if v is not None}


class GateService:
    def __init__(self, requests: RequestService, gates: GateStore, releases: Releases) -> None:
        self.requests = requests
        self.gates = gates
        self.releases = releases

    def open(self, held: HeldDeployment) -> Opened:
        """Record the deployment once, then ask for it as its pipeline would; whatever refuses it
        (no policy entry, a closed window, an unknown requester…) goes back to the platform."""
        policy = self.requests.rules.policy
        pipeline = policy.gated_pipeline(held.platform, held.place, held.environment)
        context = _clean(held.context)
        binding = {k: context[k] for k in BINDING[held.platform] if k in context}
        t = now_ms()
        opened = self.gates.open(
            held.gate_id,
            platform=held.platform,
            pipeline=pipeline or "",
            place=held.place,
            environment=held.environment,
            target=held.target,
            binding=binding,
            now_ms=t,
            watchdog_ms=WATCHDOG_MS,
        )
        if not opened:
            known = self.gates.get(held.gate_id)
            if known is None or known.request_id or known.refusal or known.told or known.pipeline != (pipeline or ""):
                return Opened(held.gate_id, known.request_id if known else None, known=True)
            # delivered before, but that delivery failed before its request was recorded: carry on
            # (the request is asked for under the same Idempotency-Key, so it is made at most once)
        if pipeline is None:
            why = (
                f"no pipeline in jit's policy gates {TITLE[held.platform]} {held.place} environment "
                f"{held.environment!r}"
            )
            self.gates.refuse(held.gate_id, why, t)
            return Opened(held.gate_id, refused=why)
        sibling = self._sibling(held, context)
        if sibling is not None:
            self.gates.link(held.gate_id, sibling.id, None, run_group(sibling.context))
            return Opened(held.gate_id, sibling.id, sibling.status.value)
        action = policy.pipelines[pipeline].gate_action
        try:
            body = RequestBody(action=action or "", reason=_reason(held.reason))
            created = self.requests.create(
                pipeline,
                body,
                idempotency_key=held.gate_id,
                verified={"context": context, "requested_by": held.requested_by},
                gate=held.gate_id,
            )
        except E.JitError as e:
            self.gates.refuse(held.gate_id, e.message, t)
            return Opened(held.gate_id, refused=e.message)
        req = created.request
        self.link(held.gate_id, req)
        return Opened(held.gate_id, req.id, req.status.value)

    def _sibling(self, held: HeldDeployment, context: dict[str, str]) -> AccessRequest | None:
        """GitHub decides a run's environment once, releasing every job of the run waiting on it:
        another deployment of the same run attempt to the same environment joins the open request
        the first one made (one decision, told once by the first gate), rather than a second one."""
        key = run_key(held.platform, context) if held.platform == GITHUB else None
        first = self.gates.for_run(key) if key is not None else None
        if first is None or first.id == held.gate_id or not first.request_id:
            return None
        req = self.requests.store.get(first.request_id)
        return req if req is not None and req.status in OPEN else None

    def link(self, gate_id: str, req: AccessRequest) -> None:
        platform = GITHUB if gate_id.startswith("gh-") else "gitlab"
        group = run_group(req.context) if platform == GITHUB else None
        self.gates.link(gate_id, req.id, run_key(platform, req.context), group)

    def cancel(self, records: list[GateRecord], why: str) -> list[str]:
        """The platform cancelled these deployments: nothing is owed to it any more, and their
        requests end (a pending one is cancelled, an issued credential revoked). Returns the
        request ids ended."""
        ended = []
        for rec in records:
            if not rec.told:
                self.gates.told(rec.id, "cancelled", why, now_ms())
            req = self.requests.store.get(rec.request_id) if rec.request_id else None
            if req is None or req.status not in OPEN:
                continue
            try:
                self.releases.release(FollowUp(req, rec.platform))
            except E.JitError:
                continue  # it ended some other way meanwhile
            ended.append(req.id)
        return ended


def _reason(text: str) -> str:
    text = " ".join(text.split()) or "a deployment waits for approval"
    return text[:MAX_REASON]


def _clean(context: dict[str, Any]) -> dict[str, str]:
    """What a platform said, as request context: text only, bounded, nothing empty."""
    out = {}
    for k, v in context.items():
        if v is None or v == "" or isinstance(v, bool | dict | list):
            continue
        text = str(v)[:MAX_VALUE]
        if encodable(text):
            out[k] = text
    return out
