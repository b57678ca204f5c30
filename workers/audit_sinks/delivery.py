"""The delivery loop inside `jit worker`: one thread per sink streams the audit trail to it.

At least once and in order, per sink: a thread reads the stream after the sink's cursor, hands
the batch to the sink, and moves the cursor only once the sink has taken it. A sink that fails is
retried from its cursor with backoff (1 s, 2 s, 4 s … `backoff_max`) on its own thread, so other
sinks and the product never wait for it. One worker at a time delivers to a sink (a lease in
Redis, renewed on every step); when its worker dies another takes over once the lease lapses,
from the cursor. A sink failing longer than its `alert_after` is alerted in the audit channel
(once per outage, through the owed-message queue) and recorded as `audit.sink_down`; its
recovery as `audit.sink_recovered`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from redis.exceptions import LockError, RedisError

from bot.core.audit_sinks import FileSink, HttpSink, SyslogSink
from bot.core.clock import human, now_ms, rfc3339_ms
from bot.runtime import Runtime
from bot.store import keys
from bot.store.audit import stream_entry
from bot.store.audit_sinks import Outage, SinkCursors
from bot.store.metrics import AUDIT_SINK_FAILURES
from workers.audit_sinks.transports import SinkError, Transport, open_transport

log = logging.getLogger("jit.audit.sinks")

Sink = HttpSink | SyslogSink | FileSink
#: How long one read waits for new entries (XREAD BLOCK): a new entry wakes it at once.
BLOCK_MS = 1000
#: A worker without the lease looks again this often.
STANDBY_S = 1.0


class SinkDelivery:
    """Streams the trail to one sink, on its own thread."""

    def __init__(
        self,
        rt: Runtime,
        cfg: Sink,
        transport: Callable[[Sink], Transport] = open_transport,
    ) -> None:
        self.rt = rt
        self.cfg = cfg
        self.cursors = SinkCursors(rt.redis)
        self._transport = transport
        # Long enough for one read and one delivery at their slowest, renewed before each.
        self.lease_s = 2 * cfg.timeout + BLOCK_MS / 1000 + 2
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def name(self) -> str:
        return self.cfg.name

    # ------------------------------------------------------------------ the loop

    def run(self) -> None:
        while not self._stop.is_set():
            lease = self.rt.redis.lock(keys.audit_sink_lease(self.name), timeout=self.lease_s, blocking=False)
            try:
                held = lease.acquire()
            except RedisError as e:
                log.warning("audit sink %s: Redis unavailable (%s)", self.name, type(e).__name__)
                self._stop.wait(STANDBY_S)
                continue
            if not held:  # another worker delivers to this sink
                self._stop.wait(STANDBY_S)
                continue
            transport = None
            try:
                transport = self._transport(self.cfg)
                self._deliver(lease, transport)
            except LockError:
                log.warning("audit sink %s: lease lost; another worker takes over", self.name)
            except Exception:  # noqa: BLE001 - Redis trouble or a bug: log, start over from the cursor
                log.exception("audit sink %s: delivery loop failed; starting over from its cursor", self.name)
                self._stop.wait(STANDBY_S)
            finally:
                if transport is not None:
                    transport.close()
                try:
                    lease.release()
                except (LockError, RedisError):
                    pass

    def _deliver(self, lease, transport: Transport) -> None:
        if self.cfg.start == "now":
            self.cursors.start_at_head(self.name)
        sid, seq = self.cursors.cursor(self.name)
        backoff, retry_at = 0.0, 0.0
        maybe_failing = True  # an outage recorded before this worker took over ends with our first success
        while not self._stop.is_set():
            lease.reacquire()  # LockNotOwnedError once it lapsed: someone else may be delivering
            wait = retry_at - time.monotonic()
            if wait > 0:
                self._stop.wait(min(wait, STANDBY_S))
                continue
            rows = self.rt.redis.xread({keys.audit_stream(): sid}, count=self.cfg.batch, block=BLOCK_MS)
            if not rows or not rows[0][1]:
                continue
            entries = [stream_entry(s, f) for s, f in rows[0][1]]
            if seq and entries[0].seq > seq + 1:
                log.warning(
                    "audit sink %s: entries #%s to #%s were trimmed before it took them",
                    self.name,
                    seq + 1,
                    entries[0].seq - 1,
                )
            try:
                transport.deliver(entries)
            except Exception as e:  # noqa: BLE001 - any failure of the sink: retried from the cursor
                transport.close()
                backoff = 1.0 if not backoff else min(backoff * 2, self.cfg.backoff_max.total_seconds())
                retry_at = time.monotonic() + backoff
                self._failed(e, seq, backoff)
                maybe_failing = True
                continue
            # The sink has them: the cursor moves (forward only, whoever holds the lease now).
            last = entries[-1]
            self.cursors.advance(self.name, last.stream_id, last.seq)
            sid, seq = last.stream_id, last.seq
            backoff = 0.0
            if maybe_failing:
                self._recovered(seq)
                maybe_failing = False

    # ------------------------------------------------------------------ outages

    def _failed(self, error: Exception, acked_seq: int, retry_in: float) -> None:
        why = str(error) if isinstance(error, SinkError) else type(error).__name__
        outage = self.cursors.failed(self.name, why)
        self.rt.metrics.inc(AUDIT_SINK_FAILURES, self.name)
        log.warning("audit sink %s: %s; retrying in %.0f s", self.name, why, retry_in)
        if now_ms() - outage.since_ms >= self.cfg.alert_after.total_seconds() * 1000:
            if self.cursors.claim_alert(self.name):
                self._alert_down(outage, why, acked_seq)

    def _alert_down(self, outage: Outage, why: str, acked_seq: int) -> None:
        down_for = human((now_ms() - outage.since_ms) / 1000)
        self.rt.audit.append(
            "audit.sink_down",
            actor="jit",
            outcome="failing",
            details={
                "sink": self.name,
                "type": self.cfg.type,
                "failing_since": rfc3339_ms(outage.since_ms),
                "attempts": outage.attempts,
                "error": why,
                "acknowledged_seq": acked_seq,
                "lag_seconds": round(self.cursors.lag_seconds(self.name), 1),
            },
        )
        self._notify(
            f":rotating_light: *Audit sink `{self.name}` ({self.cfg.type}) has been failing for {down_for}* "
            f"({outage.attempts} attempts; last: {why}). Nothing is lost: events from #{acked_seq + 1} wait in "
            "Redis (retention keeps them, up to JIT_AUDIT_MAX_ENTRIES) and go out in order once it is back."
        )

    def _recovered(self, seq: int) -> None:
        outage = self.cursors.recovered(self.name)
        if outage is None:
            return
        down_for_s = (now_ms() - outage.since_ms) / 1000
        log.info("audit sink %s: delivering again after %s", self.name, human(down_for_s))
        if not outage.alerted:
            return  # a short blip: counted in jit_audit_sink_failures_total, not worth an alert
        self.rt.audit.append(
            "audit.sink_recovered",
            actor="jit",
            details={
                "sink": self.name,
                "type": self.cfg.type,
                "failing_since": rfc3339_ms(outage.since_ms),
                "down_seconds": round(down_for_s, 1),
                "attempts": outage.attempts,
                "acknowledged_seq": seq,
            },
        )
        self._notify(
            f":white_check_mark: Audit sink `{self.name}` ({self.cfg.type}) is taking events again after "
            f"{human(down_for_s)}; it has everything up to #{seq} and catches up in order."
        )

    def _notify(self, text: str) -> None:
        channel = self.rt.policy.audit_channel()
        if not channel:
            log.error("audit sink %s: no audit channel to alert (%s)", self.name, text)
            return
        self.rt.notices.queue(channel, text, alert=True)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self.run, name=f"jit-audit-sink-{self.name}", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


class AuditSinks:
    """Every configured sink's delivery, started and stopped together by `jit worker`."""

    def __init__(self, rt: Runtime, sinks: list[Sink] | None = None) -> None:
        self.rt = rt
        self.deliveries = [SinkDelivery(rt, cfg) for cfg in (rt.settings.audit_sinks() if sinks is None else sinks)]

    def start(self) -> None:
        try:
            SinkCursors(self.rt.redis).register([d.name for d in self.deliveries])
        except RedisError as e:  # /metrics misses the list until the next start; delivery does not care
            log.warning("could not register the audit sinks: %s", type(e).__name__)
        for d in self.deliveries:
            d.start()
        if self.deliveries:
            log.info("audit sinks started", extra={"sinks": [d.name for d in self.deliveries]})

    def stop(self, timeout: float = 5.0) -> None:
        for d in self.deliveries:
            d.stop()
        deadline = time.monotonic() + timeout
        for d in self.deliveries:  # each releases its lease on the way out: the next worker starts at once
            d.join(max(0.0, deadline - time.monotonic()))
