"""RQ jobs: each runs one due-queue member (`kind:id`) and moves state on.

A job may run twice or die half-way; every handler is idempotent. A job runs only while it holds
its member's current claim (`Lease.held`): a copy handed out again after a long wait in RQ does
nothing. A handler that fails puts its member back with backoff; only success removes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from bot import logs
from bot.core.clock import now_ms
from bot.runtime import Runtime
from bot.store.due import EXPIRE_PREFIX, DueQueue
from workers.backends.base import GrantError
from workers.jobs import gate, grant, reissue, revoke, timeout
from workers.jobs.notify import expiries, followups, message, notices, pacing
from workers.queue.retry import RetryLater
from workers.queue.scheduler import BatchLease, Lease

log = logging.getLogger("jit.jobs")

HANDLERS: dict[str, Callable[[Runtime, str, str], None]] = {
    "grant": grant.grant,
    "expire": revoke.expire,
    "revoke": revoke.revoke,
    "reissue": reissue.reissue,  # an extended grant's credential follows its new end
    "timeout": timeout.time_out,
    "slack": message.on_change,  # the request's message follows its state
    "post": pacing.drain_channel,  # a channel's waiting first messages, in turn (the id is the channel's)
    "dm": followups.dm,  # the requester's DM per outcome
    "remind": followups.remind,  # a pending request's reminder at half its timeout
    "warn": followups.warn,  # "expires in 5 min" in an active grant's thread
    "session": followups.session,  # "Used 2 m 13 s by run 42 · exit 0 · …" once `jit run` sent its record
    "bgalert": notices.break_glass_alert,  # the security channel hears of a break glass
    "notice": notices.notice,  # one owed Slack message (alerts, audit-channel lines, refusals)
    "gate": gate.tell,  # GitHub/GitLab hear the decision on a deployment they hold
    "usage": message.usage_changed,  # the request's message shows its token's latest checks (paced)
    "updates": expiries.catch_up,  # expired grants' messages, paced and coalesced (one item)
}


def run_due_batch(rt: Runtime, items: list[tuple[str, str]]) -> None:
    """Several due members in one job (the scheduler batches when many fall due at once). Expiries
    run together (`run_expiries`); the rest one by one."""
    expiries = [item for item in items if item[0].startswith(EXPIRE_PREFIX)]
    for member, token in items:
        if not member.startswith(EXPIRE_PREFIX):
            run_due(rt, member, token)
    if len(expiries) == 1:
        run_due(rt, *expiries[0])
    elif expiries:
        run_expiries(rt, expiries)


def run_expiries(rt: Runtime, items: list[tuple[str, str]], held_until_ms: int = 0) -> None:
    """A batch of claimed `expire:` members, however many (the worker's revoking threads run these:
    workers/queue/runner.py, which says how long their claims are known to be held)."""
    with logs.bind(job="expire"):
        _run_expiries(rt, items, held_until_ms)


def _run_expiries(rt: Runtime, items: list[tuple[str, str]], held_until_ms: int = 0) -> None:
    """A batch of `expire:` members: one lease, reads and writes pipelined, Slack left to the
    `updates:expired` job. Every member is finished, put back for later, or failed on its own; one
    that was not finished when the worker died comes back when its lease lapses (at least once)."""
    due = DueQueue(rt.redis)
    lease = BatchLease(due, items, held_until_ms=held_until_ms)
    try:
        with lease:
            if not lease.held:
                return
            rids = [member.partition(":")[2] for member, _ in lease.held]
            results: dict[str, int | Exception] = rt.revokes.expire_many(rids, rt.backend_for)
    except Exception as e:  # noqa: BLE001 - Redis away mid-batch: every member is retried
        results = {member.partition(":")[2]: e for member, _ in lease.held}
    finished, later = [], []
    t = now_ms()
    for member, token in lease.held:
        rid = member.partition(":")[2]
        res = results.get(rid, 0)
        if isinstance(res, Exception):
            attempts = due.failed(member, token, t)
            if attempts >= 0:
                _failed(rt, "expire", rid, attempts, res)
        elif res > 0:
            later.append((member, token, t + res))  # never early
        else:
            finished.append((member, token))
    due.retry_at_many(later)
    due.done_many(finished)


#: Kinds whose id names a channel, not a request.
CHANNEL_KINDS = frozenset({"post"})


def run_due(rt: Runtime, member: str, token: str) -> None:
    kind, _, rid = member.partition(":")
    subject = {"channel": rid} if kind in CHANNEL_KINDS else {"request_id": rid or None}
    with logs.bind(**subject, job=kind):
        _run_due(rt, member, token)


def _run_due(rt: Runtime, member: str, token: str) -> None:
    kind, _, rid = member.partition(":")
    handler = HANDLERS.get(kind)
    due = DueQueue(rt.redis)
    if handler is None:
        log.error("unknown due member %s", member)
        due.done(member, token)
        return
    lease = Lease(due, member, token)
    try:
        with lease:
            if not lease.held:
                return  # this claim was handed out again meanwhile: the current one does the work
            handler(rt, rid, token)
    except RetryLater as e:
        due.retry_at(member, token, now_ms() + max(e.delay_ms, 1))
        return
    except Exception as e:  # noqa: BLE001 - every failure is retried, none is lost
        attempts = due.failed(member, token, now_ms())
        if attempts >= 0:
            _failed(rt, kind, rid, attempts, e)
        return
    due.done(member, token)


def _failed(rt: Runtime, kind: str, rid: str, attempts: int, error: Exception) -> None:
    message_ = str(error) if isinstance(error, GrantError) else f"{type(error).__name__}"
    log.warning(
        "%s %s failed (attempt %d): %s",
        kind,
        rid,
        attempts,
        message_,
        extra={"request_id": rid},
        exc_info=not isinstance(error, GrantError),
    )
    req = rt.store.get(rid) if kind in ("grant", "expire", "revoke", "reissue") else None
    action = req.action if req else None
    if kind == "grant":
        rt.audit.append(
            "grant.attempt_failed",
            request_id=rid,
            action=action,
            actor="jit",
            outcome="error",
            details={"attempt": attempts, "error": message_},
        )
        rt.metrics.grant_failed(action)
        if req is not None and attempts >= rt.settings.jit_grant_max_attempts:
            rt.grants.fail(req, message_, attempts)
    elif kind == "reissue":
        rt.audit.append(
            "credential.reissue_failed",
            request_id=rid,
            action=action,
            actor="jit",
            outcome="error",
            details={"attempt": attempts, "error": message_},
        )
    elif kind in ("expire", "revoke"):
        rt.audit.append(
            "revoke.attempt_failed",
            request_id=rid,
            action=action,
            actor="jit",
            outcome="error",
            details={"attempt": attempts, "error": message_},
        )
        rt.metrics.revoke_failed(action)
        if req is not None:
            rt.store.set_fields(rid, revoke_pending="1")
            if attempts == rt.settings.jit_revoke_alert_after:
                notices.revoke_failing(rt, req, attempts, message_)


__all__ = ["HANDLERS", "run_due", "run_due_batch", "run_expiries"]
