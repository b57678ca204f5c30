"""Revocation lateness: N grants active at once, expiries spread over a window; how late is each
revoke (backend call time − expires_at)? jit's due queue + `jit worker` versus RQ's `enqueue_at`.

Grants are not created through N Slack clicks: the bench drives the store's own transitions
(create → approve → activate, the Lua scripts the product runs) from this process, then removes
the grant/Slack follow-ups those transitions queue (the grant already happened). What remains
is exactly an active grant and its `expire:` item. Revocation then goes through the real
processes: `jit worker` (its scheduler + RQ), or an RQ worker with `with_scheduler=True` for the
baseline. The `record` backend writes the wall-clock time of every revoke into Redis.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import sys
import threading
import time
from dataclasses import replace
from datetime import timedelta
from typing import Any

from bench.common import (
    APPROVER,
    CHANNEL,
    RECORD_KEY,
    RssSampler,
    Sizes,
    close_stack,
    new_stack,
    summary,
    wait_for,
)

BATCH = 500


def _runtime(stack):
    from bot.settings import Settings
    from bot.wiring import build

    env = {k: v for k, v in stack.env.items() if k.startswith(("JIT_", "SLACK_", "REDIS_"))}
    return build(Settings(**env))


class Seeder:
    """Puts active grants in place through the store's transitions, with no follow-up work left."""

    def __init__(self, rt, action: str = "bench-record") -> None:
        from bot.store.requests import NoEffects, Store

        self.rt = rt
        self.action = action
        self.rule = f"actions.{action}.approvers"  # the policy path of the action's one rule
        self.store = Store(rt.redis, rt.audit, rt.settings.jit_request_retention, effects=NoEffects())
        self.policy = rt.policy

    def _new_request(self, ttl: timedelta):
        from bot.core.clock import now
        from bot.core.crypto import token_hash
        from bot.core.model import AccessRequest, Status

        t = now()
        rid = secrets.token_hex(8)
        return AccessRequest(
            id=rid,
            action=self.action,
            pipeline="bench-ci",
            reason="bench: revocation",
            ttl=ttl,
            status=Status.PENDING,
            created_at=t,
            pending_until=t + timedelta(minutes=30),
            approvals_required=1,
            channel=CHANNEL,
            requested_by="bench",
            policy_sha256=self.policy.sha256,
            request_token_hash=token_hash(self.rt.request_tokens.token(rid)),
        )

    def _drop_follow_ups(self, ids: list[str]) -> None:
        from bot.store import keys

        members = [f"{kind}:{i}" for i in ids for kind in ("grant", "slack", "timeout", "remind", "warn")]
        pipe = self.rt.redis.pipeline(transaction=False)
        pipe.zrem(keys.due(), *members)
        pipe.hdel(keys.due_claims(), *[m for m in members if not m.startswith("grant:")])
        pipe.zrem(keys.channel_outbox(CHANNEL), *ids)
        pipe.execute()

    def _event(self, event: str, rid: str, actor: str) -> str:
        return self.rt.audit.event_body(event, request_id=rid, action=self.action, actor=actor)

    def approve_many(self, n: int, ttl: timedelta) -> list[str]:
        """create + approve: n requests in state `approved` (their grant job removed)."""
        from bot.core.clock import now_ms, to_ms

        ids: list[str] = []
        for start in range(0, n, BATCH):
            batch = []
            for _ in range(min(BATCH, n - start)):
                req = self._new_request(ttl)
                # as the hook creates it: nothing due at once but its channel's first post
                event = self._event("request.created", req.id, "pipeline:bench-ci")
                self.store.create(req, None, now_ms(), event, remind_ms=to_ms(req.reminder_at))
                # that first post: take it back before a worker makes it
                self._drop_follow_ups([req.id])
                out = self.store.approve(
                    req.id,
                    APPROVER,
                    now_ms(),
                    rules=[(self.rule, 1, [APPROVER])],
                    seen=[],
                    rule=self.rule,
                    oncall=[],
                    given=self._event("approval.given", req.id, APPROVER),
                    approved=self._event("request.approved", req.id, APPROVER),
                )
                assert out.result == "approved", out
                batch.append(req.id)
            self._drop_follow_ups(batch)
            ids += batch
        return ids

    def activate_many(self, ids: list[str], expires_ms: list[int], on_active=None) -> None:
        from bot.core.clock import from_ms, now_ms, rfc3339
        from bot.store import keys

        for start in range(0, len(ids), BATCH):
            batch = ids[start : start + BATCH]
            for rid, exp in zip(batch, expires_ms[start : start + BATCH], strict=True):
                t = now_ms()
                blob = self.rt.vault.seal({"recorded_at_ms": t, "expires_at": rfc3339(from_ms(exp))})
                # as a grant job would: record the intent under the grant's claim, then the result
                token = self.rt.redis.hget(keys.due_claims(), f"grant:{rid}")
                assert self.store.begin_grant(rid, token, t).result == "ok"
                issued = self._event("grant.issued", rid, "jit")
                out = self.store.finish_grant(rid, token, t, exp, blob, t, issued=issued, late=issued)
                assert out.ok, out
                if on_active is not None:
                    on_active(rid, exp)
            self._drop_follow_ups(batch)
            # the grant job, done, lets go of its claim (DueQueue.done): nothing of it stays
            self.rt.redis.hdel(keys.due_claims(), *[f"grant:{rid}" for rid in batch])


def _used_memory(r) -> int:
    return int(r.info("memory")["used_memory"])


def _audit_bytes(r) -> int:
    from bot.store import keys

    return sum(int(r.memory_usage(k, samples=0) or 0) for k in (keys.audit_stream(), keys.audit_nonces()))


def _follow_ups_settled(r, within_s: float) -> int:
    """Wait (at most `within_s`) for the Slack jobs the seeding's transitions queued before the
    seeder took them back: transient work (each job's key goes when it is done), not what an
    active grant keeps. Returns how many were still queued when the memory was measured."""
    from workers.queue.dispatch import ACCESS_QUEUE, SLACK_QUEUE

    def queued() -> int:
        return sum(int(r.llen(f"rq:queue:{q}")) for q in (SLACK_QUEUE, ACCESS_QUEUE))

    deadline = time.monotonic() + max(within_s, 0.0)
    while queued() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.2)  # the job in hand, if any, finishes
    return queued()


def _grant_key_bytes(r, rid: str) -> dict[str, int]:
    from bot.store import keys

    out = {}
    for name, key in (
        ("request", keys.request(rid)),
        ("credential", keys.credential(rid)),
        ("audit_index", keys.audit_by_request(rid)),
    ):
        out[name] = int(r.memory_usage(key, samples=0) or 0)
    return out


class CreateLoad:
    """Pipelines asking `POST /v1/requests` at a steady `rate` per second (open loop: a slow answer
    does not slow the asking), from a thread of its own, until stopped."""

    def __init__(self, port: int, rate: float) -> None:
        self.port = port
        self.rate = rate
        self.latency_ms: list[float] = []
        self.codes: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="create-load", daemon=True)

    async def _run(self) -> None:
        from bench.common import auth
        from bench.http import Connection

        idle: list[Connection] = []
        body = {"action": "bench-token", "reason": "bench: load during expiries"}

        async def one() -> None:
            conn = idle.pop() if idle else Connection("127.0.0.1", self.port)
            t = time.perf_counter()
            try:
                resp = await conn.request("POST", "/v1/requests", headers=auth(), json_body=body)
                status = resp.status
            except (ConnectionError, OSError):
                status = 0
            self.codes[status] = self.codes.get(status, 0) + 1
            if status == 201:
                self.latency_ms.append((time.perf_counter() - t) * 1000)
            idle.append(conn)

        tasks = set()
        start = time.perf_counter()
        sent = 0
        while not self._stop.is_set():
            due = start + sent / self.rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            task = asyncio.create_task(one())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.gather(*tasks, return_exceptions=True)
        for conn in idle:
            await conn.close()

    def __enter__(self) -> CreateLoad:
        self._thread.start()
        self.started = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(60)
        self.seconds = time.perf_counter() - self.started

    def result(self) -> dict[str, Any]:
        created = self.codes.get(201, 0)
        return {
            "rate_asked_per_s": self.rate,
            "creates_per_s": round(created / max(self.seconds, 0.001), 1),
            "latency_ms": summary(self.latency_ms, 1),
            "status_codes": {str(k): v for k, v in sorted(self.codes.items())},
        }


def _run_side(side: str, sizes: Sizes, rng_seed: int, log, load_per_s: float = 0.0) -> dict[str, Any]:
    """One side of the comparison on a fresh stack: 'jit' (jit worker) or 'rq' (enqueue_at); with
    `load_per_s`, `jit serve` takes that many creates a second while the grants expire."""
    # one channel for the load's requests; the Slack stand-in does not limit here
    stack = new_stack(JIT_SLACK_POST_INTERVAL_MS="0") if load_per_s else new_stack()
    try:
        if load_per_s:
            stack.serve(workers=2)
        rt = _runtime(stack)
        r = rt.redis
        if side == "jit":
            workers = [stack.worker(concurrency=2)]
        else:
            workers = []
            for i in range(2):  # as many RQ workers as `jit worker --concurrency 2` runs
                workers.append(stack.start(f"rq-baseline-{i}", [sys.executable, "-m", "bench.rq_baseline"]))
        wait_for(lambda: r.scard("rq:workers") >= 2, 60, 0.1, f"{side} workers to register")

        seeder = Seeder(rt)
        rng = random.Random(rng_seed)  # both sides get the same expiry offsets
        offsets = sorted(rng.uniform(0, sizes.spread_s * 1000) for _ in range(sizes.grants))
        mem0 = _used_memory(r)
        audit0 = _audit_bytes(r)
        t_seed = time.monotonic()
        ids = seeder.approve_many(sizes.grants, timedelta(seconds=int(sizes.spread_s) + 60))
        seed_a = time.monotonic() - t_seed
        # Activation costs at most what create + approve did (enqueue_at included, for RQ):
        # leave that long again, plus a margin, before the first expiry.
        margin = 5.0 if sizes.grants >= 1000 else 2.0
        t0_ms = time.time_ns() // 1_000_000 + int((1.2 * seed_a + margin) * 1000)
        expires = [t0_ms + int(o) for o in offsets]
        order = list(range(sizes.grants))
        rng.shuffle(order)  # activation order unrelated to expiry order
        ids = [ids[i] for i in order]
        expires = [expires[i] for i in order]

        on_active = None
        if side == "rq":
            from rq import Queue

            from bench.rq_baseline import QUEUE
            from bot.core.clock import from_ms

            q = Queue(QUEUE, connection=rt.raw_redis)

            def on_active(rid: str, exp: int) -> None:
                q.enqueue_at(from_ms(exp), "bench.rq_baseline.revoke", rid, result_ttl=0, failure_ttl=86400)

        seeder.activate_many(ids, expires, on_active)
        seeded_at = time.time_ns() // 1_000_000
        seed_total = time.monotonic() - t_seed
        queued = _follow_ups_settled(r, (t0_ms - seeded_at) / 1000 - 1.0) if side == "jit" else 0
        mem1 = _used_memory(r)
        audit1 = _audit_bytes(r)
        sample_keys = _grant_key_bytes(r, ids[0])
        expired_before_seeded = sum(1 for e in expires if e <= seeded_at)
        log(
            f"  {side}: {sizes.grants} grants active in {seed_total:.1f}s; first expiry in "
            f"{(t0_ms - seeded_at) / 1000:.1f}s, last in {(max(expires) - seeded_at) / 1000:.1f}s"
        )

        deadline_s = (max(expires) - time.time_ns() // 1_000_000) / 1000 + 120
        load = None
        with RssSampler({"worker": [w.popen.pid for w in workers]}) as rss:

            def all_revoked() -> bool:
                return r.hlen(RECORD_KEY) >= 2 * sizes.grants

            if load_per_s:
                wait_for(lambda: time.time_ns() // 1_000_000 >= t0_ms - 1000, deadline_s, 0.05, "the first expiry")
                load = CreateLoad(stack.port, load_per_s)
                load.__enter__()
            try:
                wait_for(all_revoked, deadline_s, 0.25, "every grant to be revoked")
            except TimeoutError:
                log(f"  {side}: not every grant was revoked before the deadline")
            finally:
                if load is not None:
                    load.__exit__(None, None, None)
        recorded = r.hgetall(RECORD_KEY)
        late, missing, dup = [], 0, 0
        for rid, exp in zip(ids, expires, strict=True):
            at = recorded.get(f"{rid}:revoke")
            if at is None:
                missing += 1
                continue
            late.append(int(at) - exp)
            if int(recorded.get(f"{rid}:revokes", "1")) > 1:
                dup += 1
        stats = summary([float(x) for x in late], 1)
        statuses: dict[str, int] = {}
        from bot.store import keys

        pipe = r.pipeline(transaction=False)
        for rid in ids:
            pipe.hget(keys.request(rid), "status")
        for st in pipe.execute():
            statuses[st or "gone"] = statuses.get(st or "gone", 0) + 1
        return {
            "grants": sizes.grants,
            "spread_s": sizes.spread_s,
            "lateness_ms": stats,
            "early": sum(1 for x in late if x < 0),
            "earliest_ms": min(late) if late else None,
            "missing": missing,
            "duplicate_revokes": dup,
            "final_statuses": statuses,
            "seeding_s": round(seed_total, 2),
            "expired_before_seeding_done": expired_before_seeded,
            "redis_used_memory_delta": mem1 - mem0,
            "jobs_queued_when_measured": queued,
            # the audit trail's share: the stream, its recent-nonce set, each request's index of entries
            "redis_audit_memory_delta": audit1 - audit0 + sizes.grants * sample_keys["audit_index"],
            "sample_grant_key_bytes": sample_keys,
            "worker_memory": rss.result()["worker"],
            **({"create_load": load.result()} if load is not None else {}),
        }
    finally:
        close_stack(stack)


def _ratio(jit: dict[str, Any], rq: dict[str, Any]) -> float | None:
    if jit["lateness_ms"]["p99"] is None or rq["lateness_ms"]["p99"] is None:
        return None
    return round(rq["lateness_ms"]["p99"] / max(jit["lateness_ms"]["p99"], 1.0), 1)


def run(sizes: Sizes, log=print) -> dict[str, Any]:
    seed = 7
    log(f"revocation lateness: {sizes.grants} grants expiring over {sizes.spread_s:g}s")
    jit = _run_side("jit", sizes, seed, log)
    rq = _run_side("rq", sizes, seed, log)
    below = None
    if sizes.light_grants:
        # The same comparison where the revokes per second stay inside what two cores can do,
        # so lateness shows the scheduling itself rather than a queue of work.
        light = replace(sizes, grants=sizes.light_grants, spread_s=sizes.light_spread_s)
        log(f"revocation lateness: {light.grants} grants expiring over {light.spread_s:g}s")
        ljit = _run_side("jit", light, seed, log)
        lrq = _run_side("rq", light, seed, log)
        below = {
            "grants": light.grants,
            "spread_s": light.spread_s,
            "jit": ljit,
            "rq_enqueue_at": lrq,
            "p99_ratio_rq_over_jit": _ratio(ljit, lrq),
        }
    under_load = None
    if sizes.load_creates_per_s:
        # The load again, while `jit serve` takes creates on the same two cores.
        log(
            f"revocation lateness: {sizes.grants} grants over {sizes.spread_s:g}s while the hook takes "
            f"{sizes.load_creates_per_s:g} creates/s"
        )
        ujit = _run_side("jit", sizes, seed, log, sizes.load_creates_per_s)
        urq = _run_side("rq", sizes, seed, log, sizes.load_creates_per_s)
        under_load = {
            "grants": sizes.grants,
            "spread_s": sizes.spread_s,
            "creates_per_s": sizes.load_creates_per_s,
            "jit": ujit,
            "rq_enqueue_at": urq,
            "p99_ratio_rq_over_jit": _ratio(ujit, urq),
        }
    return {
        "method": (
            "grants made active through the store's own Lua transitions (create, approve, activate) "
            "from the bench process, not through Slack clicks; their queued grant/Slack follow-ups "
            "removed. Revocation: the real `jit worker` process (expiry scheduler + RQ SimpleWorker, "
            "concurrency 2) vs two RQ SimpleWorkers with with_scheduler=True running the same revoke "
            "handler via Queue.enqueue_at(expires_at). Lateness = record backend's call time - "
            "expires_at. Each side on a fresh Redis, one after the other. under_load: the same while "
            "asyncio pipelines POST /v1/requests at a steady rate to `jit serve` (2 gevent workers) from the "
            "first expiry to the last revoke (jit side: its worker also posts those requests' Slack "
            "messages; RQ side: nobody does)."
        ),
        "jit": jit,
        "rq_enqueue_at": rq,
        "p99_ratio_rq_over_jit": _ratio(jit, rq),
        "below_capacity": below,
        "under_load": under_load,
        "redis_bytes_per_active_grant": round(jit["redis_used_memory_delta"] / max(sizes.grants, 1)),
        "redis_bytes_per_active_grant_without_audit": round(
            (jit["redis_used_memory_delta"] - jit["redis_audit_memory_delta"]) / max(sizes.grants, 1)
        ),
    }
