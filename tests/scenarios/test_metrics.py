"""`/metrics`: a pipeline asks, an approver clicks, the grant expires — and the numbers move."""

from __future__ import annotations

import time

from prometheus_client.parser import text_string_to_metric_families


def scrape(http) -> dict[tuple[str, frozenset], float]:
    resp = http.get("/metrics")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(resp.get_data(as_text=True)):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples, name, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def work_until(jit, rid, status, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        jit.work()
        if jit.rt.store.get(rid).status == status:
            return
        time.sleep(0.1)
    raise AssertionError(f"{rid} never reached {status}")


def test_a_request_lifecycle_moves_the_metrics(jit, http):
    before = scrape(http)
    assert value(before, "jit_requests_total", action="quick", outcome="created") == 0
    assert value(before, "jit_redis_up") == 1

    rid = jit.ask("quick", reason="metrics", ttl="1s")["id"]
    jit.work()
    mid = scrape(http)
    assert value(mid, "jit_requests_total", action="quick", outcome="created") == 1
    assert value(mid, "jit_open_requests") == 1
    assert value(mid, "jit_due_queue_size") >= 1  # its pending timeout at least

    assert jit.approve(rid, "U0LEAD1").status_code == 200
    work_until(jit, rid, "expired")  # granted, then revoked when its second ran out

    after = scrape(http)
    for outcome in ("created", "approved", "granted", "expired"):
        assert value(after, "jit_requests_total", action="quick", outcome=outcome) == 1, outcome
    assert value(after, "jit_requests_total", action="quick", outcome="revoked") == 0
    assert value(after, "jit_approval_wait_seconds_count", action="quick") == 1
    assert value(after, "jit_grant_duration_seconds_count", action="quick", backend="exec") == 1
    assert value(after, "jit_grant_duration_seconds_sum", action="quick", backend="exec") > 0
    assert value(after, "jit_revoke_duration_seconds_count", action="quick", backend="exec") == 1
    assert value(after, "jit_revocation_lateness_seconds_count", action="quick") == 1
    # the histogram is cumulative: every sample is in the +Inf bucket
    assert value(after, "jit_revocation_lateness_seconds_bucket", action="quick", le="+Inf") == 1
    assert value(after, "jit_open_requests") == 0
    for queue in ("jit-access", "jit-slack"):
        assert value(after, "jit_rq_queue_length", queue=queue) == 0


def test_grant_failures_and_early_revokes_are_counted(jit, http, state_dir):
    (state_dir / "fail-grant").write_text("")
    rid = jit.ask("quick", reason="failing target", ttl="1m")["id"]
    jit.work()
    assert jit.approve(rid, "U0LEAD1").status_code == 200
    deadline = time.time() + 30
    while value(scrape(http), "jit_grant_failures_total", action="quick") < 1:
        assert time.time() < deadline, "no grant failure counted"
        jit.work()
        time.sleep(0.1)
    (state_dir / "fail-grant").unlink()
    work_until(jit, rid, "active")

    assert jit.release(rid).status_code == 200  # the pipeline ends its grant early
    work_until(jit, rid, "revoked")
    after = scrape(http)
    assert value(after, "jit_requests_total", action="quick", outcome="revoked") == 1
    assert value(after, "jit_requests_total", action="quick", outcome="expired") == 0
    assert value(after, "jit_revocation_lateness_seconds_count", action="quick") == 0  # not an expiry
    assert value(after, "jit_revoke_duration_seconds_count", action="quick", backend="exec") == 1


def test_slack_errors_and_429s_are_counted(jit, http, slack):
    slack.rate_limit(retry_after=1, times=1, methods="chat.postMessage")
    rid = jit.ask("quick", reason="slack is busy")["id"]
    deadline = time.time() + 30
    while not jit.rt.store.get(rid).message_ts:
        assert time.time() < deadline, "the message was never posted"
        jit.work()
        time.sleep(0.1)
    after = scrape(http)
    assert value(after, "jit_slack_rate_limited_total", method="chat.postMessage") == 1
    assert value(after, "jit_slack_api_errors_total", method="chat.postMessage", error="ratelimited") == 1

    slack.api_error("channel_not_found", methods="chat.update", times=1)
    jit.release(rid)  # cancelling updates the message: the first update fails
    deadline = time.time() + 30
    while (
        value(
            scrape(http),
            "jit_slack_api_errors_total",
            method="chat.update",
            error="channel_not_found",
        )
        < 1
    ):
        assert time.time() < deadline, "the Slack error was not counted"
        jit.work()
        time.sleep(0.1)


def test_metrics_are_shared_by_every_process(rt, http):
    """Counters live in Redis: what one process records, another replica's /metrics shows."""
    from bot.store.connection import redis_from_url
    from bot.store.metrics import Metrics

    other_process = Metrics(redis_from_url(rt.settings.redis_url, decode_responses=True))
    other_process.request("deploy-prod", "denied")
    other_process.revoked("deploy-prod", "exec", 0.2, lateness=0.7)
    after = scrape(http)
    assert value(after, "jit_requests_total", action="deploy-prod", outcome="denied") == 1
    assert value(after, "jit_revocation_lateness_seconds_bucket", action="deploy-prod", le="0.5") == 0
    assert value(after, "jit_revocation_lateness_seconds_bucket", action="deploy-prod", le="1.0") == 1
    assert abs(value(after, "jit_revocation_lateness_seconds_sum", action="deploy-prod") - 0.7) < 1e-9


def test_a_metric_write_never_breaks_the_caller():
    from redis import Redis

    from bot.store.metrics import Metrics

    dead = Redis(port=1, socket_connect_timeout=0.2)  # nothing listens on port 1
    Metrics(dead).request("x", "created")  # must not raise
    Metrics(dead).revoked("x", "exec", 0.1, lateness=0.1)


def test_counts_held_by_a_process_are_written_by_its_flush_and_at_its_stop(rt, http):
    """`jit serve` and `jit worker` sum their counts in the process (no write per create or batch):
    the numbers reach /metrics at the next flush, the same as written one event at a time."""
    from bot.store.connection import redis_from_url
    from bot.store.metrics import Metrics

    worker = Metrics(redis_from_url(rt.settings.redis_url, decode_responses=True))
    stop = worker.hold(every_s=3600)  # no timed flush during the test: only the explicit ones
    worker.revoked_many([("deploy-prod", "expired", "exec", 0.02, 0.03), ("deploy-prod", "expired", "exec", 0.2, 0.7)])
    worker.request("deploy-prod", "created")  # one count and one observation, as `jit serve` makes
    worker.approval_wait("deploy-prod", 20.0)
    held = scrape(http)
    assert value(held, "jit_requests_total", action="deploy-prod", outcome="expired") == 0
    assert value(held, "jit_requests_total", action="deploy-prod", outcome="created") == 0
    assert value(held, "jit_approval_wait_seconds_count", action="deploy-prod") == 0
    worker.flush()
    after = scrape(http)
    assert value(after, "jit_requests_total", action="deploy-prod", outcome="created") == 1
    assert value(after, "jit_approval_wait_seconds_bucket", action="deploy-prod", le="15.0") == 0
    assert value(after, "jit_approval_wait_seconds_bucket", action="deploy-prod", le="30.0") == 1
    assert value(after, "jit_approval_wait_seconds_sum", action="deploy-prod") == 20.0
    assert value(after, "jit_requests_total", action="deploy-prod", outcome="expired") == 2
    assert value(after, "jit_revocation_lateness_seconds_bucket", action="deploy-prod", le="0.05") == 1
    assert value(after, "jit_revocation_lateness_seconds_bucket", action="deploy-prod", le="0.5") == 1
    assert value(after, "jit_revocation_lateness_seconds_bucket", action="deploy-prod", le="1.0") == 2
    assert value(after, "jit_revocation_lateness_seconds_count", action="deploy-prod") == 2
    assert abs(value(after, "jit_revocation_lateness_seconds_sum", action="deploy-prod") - 0.73) < 1e-9
    assert value(after, "jit_revoke_duration_seconds_bucket", action="deploy-prod", backend="exec", le="0.01") == 0
    assert value(after, "jit_revoke_duration_seconds_bucket", action="deploy-prod", backend="exec", le="0.05") == 1

    worker.revoked_many([("deploy-prod", "revoked", "exec", 0.01, None)])
    stop()  # the worker's stop writes what is left, and later batches are written at once
    assert value(scrape(http), "jit_requests_total", action="deploy-prod", outcome="revoked") == 1
    worker.revoked_many([("deploy-prod", "revoked", "exec", 0.01, None)])
    after = scrape(http)
    assert value(after, "jit_requests_total", action="deploy-prod", outcome="revoked") == 2
    # an observation on a bucket's bound counts in that bucket (le: less than or equal)
    assert value(after, "jit_revoke_duration_seconds_bucket", action="deploy-prod", backend="exec", le="0.01") == 2
