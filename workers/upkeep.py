"""Periodic audit upkeep inside `jit worker`: chain what waits in the audit outbox, sum up token
checks counted past the first few (once their window is over), trim the trail by age (never past
what an audit sink has not acknowledged, short of the hard cap), post its signed chain head to
Slack; and, as a backstop, give a channel whose first posts wait with no poster due one again.

Any number of workers may run this loop. Flushing and trimming are atomic scripts (the anchor
only moves forward), and the head post takes a Redis lock with a TTL of one interval, so the
audit channel gets one post per interval however many workers are up.
"""

from __future__ import annotations

import logging
import threading

from redis.exceptions import LockError

from bot.core.clock import now, now_ms, rfc3339, to_ms
from bot.runtime import Runtime
from bot.store import keys
from bot.store.audit import TRIM_BATCH
from bot.store.audit_sinks import SinkCursors
from workers.jobs.notify.pacing import rearm_posters

log = logging.getLogger("jit.periodic")


class AuditUpkeep:
    def __init__(self, rt: Runtime, tick_s: float | None = None) -> None:
        self.rt = rt
        self._tick_s = tick_s
        self._stop = threading.Event()

    @property
    def tick_s(self) -> float:
        if self._tick_s is not None:
            return self._tick_s
        every = self.rt.policy.model.audit.post_head_every.total_seconds()
        return max(1.0, min(30.0, every / 4))

    # ------------------------------------------------------------------ the jobs

    def flush(self) -> int:
        """Chain events a process left in the outbox when it died between its state change and
        its own flush."""
        flushed = self.rt.audit.flush()
        if flushed:
            log.info("audit outbox flushed", extra={"entries": flushed})
        return flushed

    def trim(self) -> int:
        """Drop entries older than the policy's retention, but none an audit sink has not
        acknowledged yet; the trail records the cut. Past the hard cap (JIT_AUDIT_MAX_ENTRIES)
        the oldest go even so: alerted in the audit channel and recorded as `audit.hard_cap_trimmed`."""
        retention = self.rt.policy.model.audit.retention
        cut = to_ms(now() - retention)
        sinks = [s.name for s in self.rt.settings.audit_sinks()]
        removed = self.rt.audit.trim(cut, up_to_id=SinkCursors(self.rt.redis).floor(sinks))
        if removed:
            anchor = self.rt.audit.anchor()
            self.rt.audit.append(
                "audit.trimmed",
                actor="jit",
                details={
                    "removed": removed,
                    "older_than": rfc3339(now() - retention),
                    "anchor_seq": int(anchor.get("seq", 0)),
                    "anchor_hash": anchor.get("hash"),
                },
            )
            log.info("audit trail trimmed", extra={"removed": removed})
        return removed + self.trim_to_cap(sinks)

    def trim_to_cap(self, sinks: list[str]) -> int:
        """Keep at most JIT_AUDIT_MAX_ENTRIES entries in Redis, sinks or not (memory is finite)."""
        cap = self.rt.settings.jit_audit_max_entries
        removed = 0
        while (over := self.rt.redis.xlen(keys.audit_stream()) - cap) > 0:
            rows = self.rt.redis.xrange(keys.audit_stream(), count=min(over, TRIM_BATCH))
            n = self.rt.audit.trim(now_ms() + 1, up_to_id=rows[-1][0])
            if n == 0:
                break  # the trail does not verify (trim logged why) or another worker trims
            removed += n
        if not removed:
            return 0
        anchor = self.rt.audit.anchor()
        anchor_seq = int(anchor.get("seq", 0))
        unsent = SinkCursors(self.rt.redis).behind(sinks, anchor_seq)
        self.rt.audit.append(
            "audit.hard_cap_trimmed",
            actor="jit",
            outcome="unsent" if unsent else "ok",
            details={
                "removed": removed,
                "max_entries": cap,
                "anchor_seq": anchor_seq,
                "anchor_hash": anchor.get("hash"),
                "sinks_behind": unsent,
            },
        )
        log.warning("audit trail trimmed at its hard cap", extra={"removed": removed, "sinks_behind": unsent})
        channel = self.rt.policy.audit_channel()
        # one alert an hour while it lasts, however many workers trim
        if unsent and channel and self.rt.redis.set(keys.audit_cap_alerted(), now_ms(), nx=True, ex=3600):
            names = ", ".join(f"`{n}` (has up to #{seq})" for n, seq in sorted(unsent.items()))
            self.rt.notices.queue(
                channel,
                f":rotating_light: *The audit trail reached its hard cap of {cap} entries in Redis*: entries up to "
                f"#{anchor_seq} were trimmed before these sinks took them: {names}. Export what remains "
                "(`jit audit export`) and bring the sinks back, or raise JIT_AUDIT_MAX_ENTRIES.",
                alert=True,
            )
        return removed

    def post_head(self) -> bool:
        """Post the signed chain head to the audit channel, once per `post_head_every` across
        workers. The post is a checkpoint anyone can check offline: SEQ:SHA256:SIGNATURE."""
        channel = self.rt.policy.audit_channel()
        head = self.rt.audit.head()
        if not channel or not head:
            return False
        every_s = max(self.rt.policy.model.audit.post_head_every.total_seconds(), 1.0)
        # redis-py's Lock: released only with its own token, never another worker's lock
        lock = self.rt.redis.lock(keys.audit_head_posted(), timeout=every_s, blocking=False)
        if not lock.acquire():
            return False
        entry = self.rt.audit.head_entry()
        seq, digest = head.get("seq", "0"), head.get("hash", "")
        if entry is not None:
            text = (
                f":link: *jit audit chain head* — entry #{seq}, SHA-256 `{digest}`, signed by key "
                f"`{entry.kid}` (as of {rfc3339(now())}). Check the trail against it with "
                f"`jit audit verify --checkpoint {seq}:{digest}:{entry.sig}`."
            )
        else:  # never vouch for a head jit did not sign
            text = (
                f":warning: *jit audit chain head* #{seq} (`{digest}`) does NOT carry a valid "
                "signature: the trail in Redis was changed. Run `jit audit verify`."
            )
        try:
            resp = self.rt.slack.chat_postMessage(channel=channel, text=text)
        except Exception as e:  # noqa: BLE001 - Slack down or rate-limited: the next tick retries
            try:
                lock.release()
            except LockError:  # expired meanwhile, perhaps taken by another worker: theirs now
                pass
            log.warning("posting the audit chain head failed: %s", type(e).__name__)
            return False
        self.rt.audit.append(
            "audit.head_posted",
            actor="jit",
            outcome="ok" if entry is not None else "unsigned",
            details={"seq": int(seq), "hash": digest, "channel": channel, "ts": resp.get("ts")},
        )
        return True

    # ------------------------------------------------------------------ the loop

    def sum_up_token_checks(self) -> int:
        """Write the sums of token checks counted but not audited one by one, once their window
        is over, even when no further check comes (bot/store/usage.py)."""
        return self.rt.usage.write_due_summaries()

    def rearm_posters(self) -> list[str]:
        """Not audit, but periodic too: a channel whose first posts wait with no poster due gets
        one again (workers/jobs/notify/pacing.py)."""
        return rearm_posters(self.rt)

    def run_once(self) -> tuple[int, bool]:
        self.flush()
        self.sum_up_token_checks()
        self.rearm_posters()
        return self.trim(), self.post_head()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - Redis or Slack trouble: log, keep the loop alive
                log.exception("audit upkeep failed; retrying next tick")
            self._stop.wait(self.tick_s)

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.run, name="jit-audit-upkeep", daemon=True)
        t.start()
        return t

    def stop(self) -> None:
        self._stop.set()
