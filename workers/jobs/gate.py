"""`gate:<id>`: tell GitHub or GitLab how a deployment it holds was decided. Retried with backoff
until the platform takes it (every failure shows on the request's message); never sent twice once
taken; a refusal of the platform's own (a 4xx that will not change) ends it, shown and audited."""

from __future__ import annotations

from contextlib import suppress

from redis.exceptions import LockError

from bot.core.clock import now, now_ms
from bot.core.gates import GITHUB, TITLE, Verdict, refusal_comment, run_group, verdict
from bot.platforms.github import GitHubApp, UnknownInstallation
from bot.platforms.gitlab import GitLabApi
from bot.platforms.http import ApiError
from bot.request.gates.service import WATCHDOG_MS, GateService
from bot.runtime import Runtime
from bot.store import keys
from bot.store.due import DueQueue
from bot.store.gates import GateRecord, GateStore
from workers.queue.retry import RetryLater


def tell(rt: Runtime, gid: str, token: str) -> None:
    # one teller at a time: a decision's kick may re-claim this item while a job is still sending
    lock = rt.redis.lock(keys.gate_lock(gid), timeout=60, blocking_timeout=0)
    if not lock.acquire():
        raise RetryLater(1000)
    try:
        _tell(rt, gid)
    finally:
        with suppress(LockError):  # held past its timeout: someone else's now
            lock.release()


def _tell(rt: Runtime, gid: str) -> None:
    gates = GateStore(rt.redis, rt.settings.jit_request_retention)
    rec = gates.get(gid)
    if rec is None or rec.told or rec.gave_up:
        return  # gone with its retention, or nothing more is owed
    first = gates.of_request(rec.request_id) if rec.request_id else None
    if first is not None and first.id != rec.id:
        # another deployment of the same run and environment: GitHub takes one decision for both,
        # which the request's own gate sends; this one only follows it
        if not first.told and not first.gave_up:
            raise RetryLater(5000)
        state = first.told or "gave_up"
        gates.told(gid, state, f"decided with deployment gate {first.id}", now_ms())
        return
    rid, v = _verdict(rt, gates, rec)
    if v.state is None:
        gates.told(gid, "cancelled", v.note, now_ms())
        _show(rt, rid)
        return
    landed_unseen = None
    gates.sending(gid)
    try:
        _send(rt, rec, v.state, v.comment)
    except (ApiError, UnknownInstallation) as e:
        permanent = isinstance(e, UnknownInstallation) or e.permanent
        if permanent and rec.unsure:
            # the last attempt's answer was lost (or its job died after sending), and it did land:
            # the platform is decided, and refuses to decide again
            landed_unseen = str(e)
        elif permanent:
            gates.give_up(gid, str(e))
            _audit(rt, rec, rid, "gate.refused", {"state": v.state, "error": str(e)}, outcome="error")
            _show(rt, rid)
            return
        else:
            attempts = gates.attempt_failed(gid, str(e), e.maybe_sent)
            _show(rt, rid)
            raise RuntimeError(f"telling {TITLE[rec.platform]} failed (attempt {attempts}): {e}") from None
    gates.told(gid, v.state, v.comment, now_ms())
    _settle_followers(rt, gates, rec, rid, v.state)
    details = {"state": v.state, "comment": v.comment, "failed_attempts": rec.attempts}
    if landed_unseen is not None:
        details["resend_refused"] = landed_unseen  # told by an earlier attempt whose answer jit never saw
    _audit(rt, rec, rid, "gate.told", details)
    _show(rt, rid)


def _settle_followers(rt: Runtime, gates: GateStore, rec: GateRecord, rid: str | None, state: str) -> None:
    """The other deployments of the run and environment that joined this gate's request: GitHub's
    one decision released them too."""
    req = rt.store.get(rid) if rid and rec.platform == GITHUB else None
    group = run_group(req.context) if req is not None else None
    for other in gates.in_group(group) if group is not None else []:
        if other.id != rec.id and other.request_id == rid and not other.told:
            gates.told(other.id, state, f"decided with deployment gate {rec.id}", now_ms())


def _verdict(rt: Runtime, gates: GateStore, rec: GateRecord) -> tuple[str | None, Verdict]:
    """The request behind the gate and what to tell the platform about it (RetryLater: not yet)."""
    if rec.refusal:
        return rec.request_id, Verdict("rejected", refusal_comment(rec.refusal))
    rid = rec.request_id or (rt.requests.created_for(rec.pipeline, rec.id) if rec.pipeline else None)
    if rid is None:
        waited = now_ms() - rec.opened_ms
        if waited < WATCHDOG_MS:
            raise RetryLater(WATCHDOG_MS - waited)
        return None, Verdict("rejected", refusal_comment("jit could not record a request for it; re-run the job"))
    req = rt.store.get(rid)
    if req is None:
        return rid, Verdict("rejected", refusal_comment("its jit request no longer exists"))
    if rec.request_id is None:  # the webhook's process died before it linked the two
        GateService(rt.requests, gates, rt.revokes).link(rec.id, req)
    people = {uid: name for name, uid in rt.rules.policy_of(req).model.people.items()}
    v = verdict(req, now(), lambda uid: f"{people[uid]} ({uid})" if uid in people else uid)
    if v.wait_ms:
        raise RetryLater(v.wait_ms)
    return rid, v


def _send(rt: Runtime, rec: GateRecord, state: str, comment: str) -> None:
    t = rec.target
    if rec.platform == GITHUB:
        app = GitHubApp.from_settings(rt.settings, rt.redis, rt.vault)
        if app is None:
            raise ApiError(0, "GitHub is not configured here (GITHUB_APP_ID)")
        app.review(t["installation_id"], t["callback_url"], t["environment"], state, comment)
    else:
        api = GitLabApi.from_settings(rt.settings)
        if api is None:
            raise ApiError(0, "GitLab is not configured here (GITLAB_URL)")
        api.decide(t["project_id"], t["deployment_id"], state, comment)


def _show(rt: Runtime, rid: str | None) -> None:
    """The request's message shows what the platform heard (or why not yet)."""
    if rid:
        rt.store.message_owed(rid)
        DueQueue(rt.redis).schedule(f"slack:{rid}", now_ms())


def _audit(rt: Runtime, rec: GateRecord, rid: str | None, event: str, details: dict, outcome: str = "ok") -> None:
    req = rt.store.get(rid) if rid else None
    rt.audit.append(
        event,
        request_id=rid,
        action=req.action if req else None,
        actor="jit",
        outcome=outcome,
        details={
            "platform": rec.platform,
            "place": rec.place,
            "environment": rec.environment,
            "gate": rec.id,
            **details,
        },
    )
