"""Prometheus metrics (`jit_…`), counted in Redis so any replica's `/metrics` shows the whole deployment.

Why Redis and not process memory: the events worth counting happen in many processes — clicks and
pipeline calls in every gunicorn worker of every `jit serve` replica, grants and revokes in every
`jit worker` and its forked children. In-process counters (even with `prometheus_client.multiprocess`,
which only aggregates processes that share one directory on one host) would need every process on
every host scraped separately. Here each event is one `HINCRBY` into `keys.metrics()`, and
`/metrics` renders that hash plus live queue depths. Consequences, documented in the README (Operations → Metrics):

- every replica returns the same numbers: scrape one address (the load balancer) or aggregate
  with `max without (instance)`, never `sum`;
- counters survive restarts (they live as long as Redis's data), so `rate()` sees no resets;
- a metric write that fails (Redis away) is dropped and logged at debug: metrics never break a grant.
- `jit serve`'s and `jit worker`'s processes sum their counts and write them once a second
  (`Metrics.hold`): no round trip per create or revocation, and at most a second late.
"""

from __future__ import annotations

import json
import logging
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from redis import Redis
from slack_sdk.errors import SlackApiError

from bot.core.clock import now_ms
from bot.store import keys
from bot.store.audit_sinks import SinkCursors
from bot.store.notices import ALERT_LATE_MS

#: Jobs waiting and jobs failed, per job queue (the dispatcher knows its queues).
QueueDepths = Callable[[], dict[str, tuple[int, int]]]

log = logging.getLogger("jit.metrics")

MAX_LABEL = 64


@dataclass(frozen=True)
class Counter:
    name: str
    help: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Histogram:
    name: str
    help: str
    labels: tuple[str, ...]
    buckets: tuple[float, ...]


#: Outcomes counted in `jit_requests_total`, in the order a request meets them.
OUTCOMES = (
    "created",
    "approved",
    "denied",
    "timed_out",
    "cancelled",
    "granted",
    "failed",
    "expired",
    "revoked",
)

REQUESTS = Counter(
    "jit_requests_total",
    "Access requests by action and outcome (one count per lifecycle step).",
    ("action", "outcome"),
)
GRANT_FAILURES = Counter(
    "jit_grant_failures_total",
    "Grant attempts that failed (each is retried with backoff).",
    ("action",),
)
REVOKE_FAILURES = Counter(
    "jit_revoke_failures_total",
    "Revoke attempts that failed (each is retried until it succeeds).",
    ("action",),
)
SLACK_ERRORS = Counter(
    "jit_slack_api_errors_total",
    "Slack Web API calls that failed, by method and Slack error code.",
    ("method", "error"),
)
SLACK_429 = Counter("jit_slack_rate_limited_total", "Slack Web API calls answered 429 (rate limited).", ("method",))
AUDIT_SINK_FAILURES = Counter(
    "jit_audit_sink_failures_total",
    "Deliveries of audit events to a sink that failed (each is retried from the sink's cursor).",
    ("sink",),
)

APPROVAL_WAIT = Histogram(
    "jit_approval_wait_seconds",
    "From request created to fully approved.",
    ("action",),
    (5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200),
)
GRANT_SECONDS = Histogram(
    "jit_grant_duration_seconds",
    "Time the grant backend took to issue a credential.",
    ("action", "backend"),
    (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
REVOKE_SECONDS = Histogram(
    "jit_revoke_duration_seconds",
    "Time the grant backend took to revoke a credential.",
    ("action", "backend"),
    (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
LATENESS = Histogram(
    "jit_revocation_lateness_seconds",
    "How long after its expiry a grant was actually revoked.",
    ("action",),
    (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)

COUNTERS = (REQUESTS, GRANT_FAILURES, REVOKE_FAILURES, SLACK_ERRORS, SLACK_429, AUDIT_SINK_FAILURES)
HISTOGRAMS = (APPROVAL_WAIT, GRANT_SECONDS, REVOKE_SECONDS, LATENESS)


def _label(value: object) -> str:
    return str(value if value is not None else "")[:MAX_LABEL]


@lru_cache(maxsize=4096)  # labels come from the policy (actions, backends): few, and repeated
def _field(kind: str, name: str, labels: tuple[str, ...], extra: str = "") -> str:
    return json.dumps([kind, name, list(labels), extra], separators=(",", ":"))


class _Tally:
    """Counter and histogram increments summed in this process, for one write."""

    def __init__(self) -> None:
        self.ints: dict[str, int] = {}
        self.floats: dict[str, float] = {}

    def __bool__(self) -> bool:
        return bool(self.ints or self.floats)

    def count(self, field: str, n: int = 1) -> None:
        self.ints[field] = self.ints.get(field, 0) + n

    def observe(self, metric: Histogram, labels: tuple[str, ...], value: float) -> None:
        """Every bucket the value falls in (cumulative, as Prometheus reads them), count and sum."""
        for le in metric.buckets[bisect_left(metric.buckets, value) :]:
            self.count(_field("h", metric.name, labels, repr(float(le))))
        self.count(_field("h", metric.name, labels, "count"))
        f = _field("h", metric.name, labels, "sum")
        self.floats[f] = self.floats.get(f, 0.0) + float(value)

    def merge_into(self, other: _Tally) -> None:
        """Add these sums to `other`'s."""
        for f, n in self.ints.items():
            other.count(f, n)
        for f, x in self.floats.items():
            other.floats[f] = other.floats.get(f, 0.0) + x


class Metrics:
    """Records events. Cheap to build: holds only the Redis client."""

    def __init__(self, redis: Redis) -> None:
        self.r = redis
        self._held: _Tally | None = None  # see `hold`
        self._held_lock = threading.Lock()

    # ------------------------------------------------------------------ primitives

    def inc(self, metric: Counter, *values: object, amount: int = 1) -> None:
        labels = tuple(_label(v) for v in values)
        field = _field("c", metric.name, labels)
        if self._add(lambda tally: tally.count(field, amount)):
            return
        try:
            self.r.hincrby(keys.metrics(), field, amount)
        except Exception as e:  # noqa: BLE001 - a metric is never worth a failed grant
            log.debug("metric %s dropped: %s", metric.name, type(e).__name__)

    def observe(self, metric: Histogram, value: float, *values: object) -> None:
        tally = _Tally()
        tally.observe(metric, tuple(_label(v) for v in values), value)
        if not self._add(tally.merge_into):
            self._write(tally)  # in one transaction: a scrape sees all of one observation or none

    def _add(self, change: Callable[[_Tally], None]) -> bool:
        """While held (see `hold`), apply `change` to what the next flush writes: True."""
        with self._held_lock:
            if self._held is None:
                return False
            change(self._held)
            return True

    # ------------------------------------------------------------------ domain events

    def request(self, action: str, outcome: str) -> None:
        self.inc(REQUESTS, action, outcome)

    def approval_wait(self, action: str, seconds: float) -> None:
        self.observe(APPROVAL_WAIT, max(seconds, 0.0), action)

    def granted(self, action: str, backend: str, seconds: float) -> None:
        self.observe(GRANT_SECONDS, seconds, action, backend)

    def revoked(self, action: str, backend: str, seconds: float, lateness: float | None) -> None:
        self.observe(REVOKE_SECONDS, seconds, action, backend)
        if lateness is not None:
            self.observe(LATENESS, max(lateness, 0.0), action)

    def revoked_many(self, revokes: list[tuple[str, str, str, float, float | None]]) -> None:
        """`request` + `revoked` for a batch of (action, outcome, backend, seconds, lateness_s),
        summed here and written in one transaction — or, while `hold` is on (the worker's revoking
        threads), summed into what the next flush writes, so the counting is off the path of every
        revocation batch: one write a second instead of one per batch."""
        tally = _Tally()
        for action, outcome, backend, seconds, lateness in revokes:
            a, b = _label(action), _label(backend)
            tally.count(_field("c", REQUESTS.name, (a, _label(outcome))))
            tally.observe(REVOKE_SECONDS, (a, b), seconds)
            if lateness is not None:
                tally.observe(LATENESS, (a,), max(lateness, 0.0))
        if not self._add(tally.merge_into):
            self._write(tally)

    def hold(self, every_s: float = 1.0) -> Callable[[], None]:
        """From now on this process sums its counts and observations and a thread writes the sums
        every `every_s` seconds, in one transaction: no round trip per event on the path of a
        create or a revocation batch. Returns the stop, which writes what is left (a process that
        dies first loses at most `every_s` of counts: metrics, never the events themselves)."""
        with self._held_lock:
            self._held = _Tally()
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(every_s):
                self.flush()

        thread = threading.Thread(target=run, name="jit-metrics", daemon=True)
        thread.start()

        def stop_holding() -> None:
            stop.set()
            thread.join(every_s + 5)
            with self._held_lock:
                left, self._held = self._held, None
            if left is not None:
                self._write(left)

        return stop_holding

    def flush(self) -> None:
        """Write what was summed while held."""
        with self._held_lock:
            if self._held is None:
                return
            tally, self._held = self._held, _Tally()
        self._write(tally)

    def _write(self, tally: _Tally) -> None:
        if not tally:
            return
        try:
            pipe = self.r.pipeline(transaction=True)  # a scrape sees all of a batch or none
            for f, n in tally.ints.items():
                pipe.hincrby(keys.metrics(), f, n)
            for f, x in tally.floats.items():
                pipe.hincrbyfloat(keys.metrics(), f, x)
            pipe.execute()
        except Exception as e:  # noqa: BLE001
            log.debug("revoke metrics dropped: %s", type(e).__name__)

    def grant_failed(self, action: str | None) -> None:
        self.inc(GRANT_FAILURES, action)

    def revoke_failed(self, action: str | None) -> None:
        self.inc(REVOKE_FAILURES, action)

    def slack_error(self, method: str, error: str, rate_limited: bool) -> None:
        self.inc(SLACK_ERRORS, method, error)
        if rate_limited:
            self.inc(SLACK_429, method)


# ---------------------------------------------------------------------- Slack client hook


def instrument_slack(client, redis: Redis):
    """Count every failed call of this WebClient (any method) by Slack error code; 429s apart.

    Wraps the instance's `api_call`, through which every `client.<method>()` goes. Idempotent.
    """
    if getattr(client, "_jit_metrics", False):
        return client
    original = client.api_call
    metrics = Metrics(redis)

    def api_call(api_method: str, **kwargs):
        try:
            return original(api_method, **kwargs)
        except SlackApiError as e:
            resp = e.response
            status = getattr(resp, "status_code", None)
            code = "ratelimited" if status == 429 else str((getattr(resp, "data", None) or {}).get("error") or status)
            metrics.slack_error(api_method, code, status == 429)
            raise
        except OSError:  # connection refused, timeout, DNS
            metrics.slack_error(api_method, "connection", False)
            raise

    client.api_call = api_call
    client._jit_metrics = True
    return client


# ---------------------------------------------------------------------- exposition


class JitCollector(Collector):
    """Renders the counters kept in Redis, and reads queue depths live at scrape time."""

    def __init__(self, redis: Redis, queue_depths: QueueDepths | None = None) -> None:
        self.r = redis
        self.queue_depths = queue_depths or (lambda: {})

    def collect(self) -> Iterator:
        try:
            stored = self.r.hgetall(keys.metrics())
        except Exception as e:  # noqa: BLE001 - Redis away: say so rather than fail the scrape
            log.warning("metrics unavailable: %s", type(e).__name__)
            up = GaugeMetricFamily("jit_redis_up", "1 when Redis answered this scrape.")
            up.add_metric([], 0)
            yield up
            return
        parsed: dict[tuple[str, str], dict[tuple[str, ...], dict[str, float]]] = {}
        for field, value in stored.items():
            try:
                kind, name, labels, extra = json.loads(field)
            except ValueError:
                continue
            parsed.setdefault((kind, name), {}).setdefault(tuple(labels), {})[extra] = float(value)

        for c in COUNTERS:
            fam = CounterMetricFamily(c.name, c.help, labels=list(c.labels))
            for labels, v in sorted(parsed.get(("c", c.name), {}).items()):
                fam.add_metric(list(labels), v.get("", 0.0))
            yield fam
        for h in HISTOGRAMS:
            fam = HistogramMetricFamily(h.name, h.help, labels=list(h.labels))
            for labels, v in sorted(parsed.get(("h", h.name), {}).items()):
                buckets = [(_le(le), v.get(repr(float(le)), 0.0)) for le in h.buckets]
                buckets.append(("+Inf", v.get("count", 0.0)))
                fam.add_metric(list(labels), buckets, v.get("sum", 0.0))
            yield fam
        yield from self._depths()

    def _depths(self) -> Iterable:
        now = now_ms()
        up = GaugeMetricFamily("jit_redis_up", "1 when Redis answered this scrape.")
        up.add_metric([], 1)
        yield up
        size = GaugeMetricFamily(
            "jit_due_queue_size",
            "Items in the due queue (grants, expiries, revokes, timeouts, Slack updates).",
        )
        size.add_metric([], self.r.zcard(keys.due()))
        yield size
        overdue = GaugeMetricFamily(
            "jit_due_queue_overdue",
            "Due-queue items whose time has come but no job has claimed yet.",
        )
        overdue.add_metric([], self.r.zcount(keys.due(), "-inf", now))
        yield overdue
        head = self.r.zrange(keys.due(), 0, 0, withscores=True)
        oldest = GaugeMetricFamily(
            "jit_due_queue_oldest_overdue_seconds",
            "How long the oldest unclaimed due item has been due (0 when none).",
        )
        oldest.add_metric([], max(0.0, (now - head[0][1]) / 1000) if head else 0.0)
        yield oldest
        late = GaugeMetricFamily(
            "jit_undelivered_alerts",
            "Alerts (break glass, failing revokes) Slack has not taken for over a minute.",
        )
        late.add_metric([], self.r.zcount(keys.undelivered_alerts(), "-inf", now - ALERT_LATE_MS))
        yield late
        lag = GaugeMetricFamily(
            "jit_audit_sink_lag_seconds",
            "How long the oldest audit event a sink has not acknowledged has waited (0: caught up).",
            labels=["sink"],
        )
        for name, seconds in SinkCursors(self.r).lags().items():
            lag.add_metric([name], seconds)
        yield lag
        open_ = GaugeMetricFamily("jit_open_requests", "Requests not yet final (pending, approved or active).")
        open_.add_metric([], self.r.zcard(keys.open_requests()))
        yield open_
        length = GaugeMetricFamily("jit_rq_queue_length", "Jobs waiting in each RQ queue.", labels=["queue"])
        failed = GaugeMetricFamily("jit_rq_failed_jobs", "Jobs in each RQ queue's failed registry.", labels=["queue"])
        for name, (waiting, failures) in sorted(self.queue_depths().items()):
            length.add_metric([name], waiting)
            failed.add_metric([name], failures)
        yield length
        yield failed


def _le(le: float) -> str:
    return str(float(le))


def registry_for(redis: Redis, queue_depths: QueueDepths | None = None) -> CollectorRegistry:
    """A registry of jit's metrics only (no per-process defaults: they would differ per worker)."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(JitCollector(redis, queue_depths))
    return reg
