"""Mass expiry: N grants all overdue when a worker starts after an outage. How long until every one
is revoked, is the audit complete, and do the Slack updates that follow stay within Tier 3?

The grants are put in place through the store's own transitions (bench/revocation.py's Seeder),
with expiries already past and a Slack message each (seeded in the stand-in), while no worker
runs. Then one `jit worker` starts. The Slack stand-in enforces Tier 3 on `chat.update` (50 a
minute for the workspace, bursts of 3): every update over it would be a 429.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from bench.common import CHANNEL, RssSampler, Sizes, close_stack, new_stack, summary, wait_for
from bench.revocation import Seeder, _runtime

ACTION = "bench-token"  # the `token` backend: revoking costs jit's own work only


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (from /proc; exited ones are missed)."""
    tick = 100.0
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / tick


def _redis_cpu_s(r) -> float:
    info = r.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def run(sizes: Sizes, log=print) -> dict[str, Any]:
    from bench.common import process_tree
    from bot.store import keys

    n = sizes.mass_grants
    log(f"mass expiry: {n} overdue grants, one worker starting after an outage")
    stack = new_stack()
    stack.slack.enforce_update_rate(per_minute=50, burst=3)
    try:
        rt = _runtime(stack)
        r = rt.redis
        seeder = Seeder(rt, ACTION)
        t_seed = time.monotonic()
        ids = seeder.approve_many(n, timedelta(minutes=10))
        now = time.time_ns() // 1_000_000
        expires = [now - 60_000 + (i % 1000) for i in range(n)]  # all a minute overdue
        seeder.activate_many(ids, expires)
        ts = stack.slack.seed_messages(CHANNEL, [f"Access request {rid}: {ACTION} — active" for rid in ids])
        pipe = r.pipeline(transaction=False)
        for rid, t in zip(ids, ts, strict=True):
            pipe.hset(keys.request(rid), mapping={"message_ts": t, "message_channel": CHANNEL})
        pipe.execute()
        log(f"  {n} overdue grants in place in {time.monotonic() - t_seed:.1f}s")

        cpu_redis0 = _redis_cpu_s(r)
        started = time.time()
        worker = stack.worker(concurrency=2)
        with RssSampler({"worker": worker.popen.pid}) as rss:
            cpu_worker = 0.0
            first: list[tuple[float, int, float]] = []  # (cpu s, open left, redis cpu s) at the first revoke

            def all_revoked() -> bool:
                nonlocal cpu_worker
                cpu_worker = max(cpu_worker, _cpu_s(process_tree(worker.popen.pid)))
                left = r.zcard(keys.open_requests())
                if left < n and not first:
                    first.append((cpu_worker, left, _redis_cpu_s(r)))
                return left == 0

            try:
                wait_for(all_revoked, 120 + n / 50, 0.1, "every overdue grant to be revoked")
            except TimeoutError:
                log("  mass expiry: not every grant was revoked before the deadline")
        done = time.time()
        cpu_redis = _redis_cpu_s(r) - cpu_redis0
        events = [e.body for e in rt.audit.entries() if e.body.get("event") == "grant.revoked"]
        lateness = [float(e["details"]["lateness_ms"]) for e in events if "lateness_ms" in (e.get("details") or {})]
        by_request: dict[str, int] = {}
        for e in events:
            by_request[e["request_id"]] = by_request.get(e["request_id"], 0) + 1
        statuses: dict[str, int] = {}
        pipe = r.pipeline(transaction=False)
        for rid in ids:
            pipe.hget(keys.request(rid), "status")
        for st in pipe.execute():
            statuses[st or "gone"] = statuses.get(st or "gone", 0) + 1
        _, broken = rt.audit.verify()

        # The messages catch up at Tier 3's pace; watch them for a while.
        watch_from = time.time()
        time.sleep(sizes.mass_watch_s)
        updates = [c for c in stack.slack.calls("chat.update") if c.time >= started]
        ok_updates = [c for c in updates if c.ok]
        in_window = [c for c in ok_updates if c.time >= watch_from]
        digests = [
            c for c in stack.slack.calls("chat.postMessage") if "grants expired" in str(c.params.get("text", ""))
        ]
        gaps = [(b.time - a.time) * 1000 for a, b in zip(ok_updates, ok_updates[1:], strict=False)]
        return {
            "method": (
                f"{n} grants of `{ACTION}` (token backend) made active through the store's transitions with "
                "expiries a minute past and a Slack message each, while no worker ran; then one `jit worker "
                "--concurrency 2` starts. Time = worker start → no open request left. Slack stand-in enforces "
                "Tier 3 on chat.update (50/min for the workspace, bursts of 3); updates watched for "
                f"{sizes.mass_watch_s:g}s after the last revoke. CPU: /proc utime+stime of the worker's process "
                "tree, Redis INFO used_cpu_user+sys, over the same span."
            ),
            "grants": n,
            "all_revoked_s": round(done - started, 2),
            "lateness_ms": summary(lateness, 0),
            "revoked_events": len(events),
            "requests_with_one_revoked_event": sum(1 for v in by_request.values() if v == 1),
            "final_statuses": statuses,
            "audit_chain_intact": broken is None,
            "cpu_worker_s": round(cpu_worker, 2),
            "cpu_redis_s": round(cpu_redis, 2),
            "cpu_ms_per_revocation_with_startup": round((cpu_worker + cpu_redis) * 1000 / max(n, 1), 2),
            # From the first revoke seen on: the worker's start-up (imports, policy) left out.
            "cpu_ms_per_revocation": round(
                ((cpu_worker - first[0][0]) + (cpu_redis + cpu_redis0 - first[0][2])) * 1000 / max(first[0][1], 1), 2
            )
            if first and first[0][1]
            else None,
            "slack": {
                "digests": len(digests),
                "digest_texts": sorted({str(c.params.get("text")) for c in digests}),
                "chat_update_ok": len(ok_updates),
                "chat_update_per_min_in_watch": round(len(in_window) * 60 / max(sizes.mass_watch_s, 0.001), 1),
                "rate_limited_429": sum(1 for c in stack.slack.calls() if c.status == 429),
                "update_gap_ms": summary(gaps, 0),
            },
            "worker_memory": rss.result()["worker"],
        }
    finally:
        close_stack(stack)
