"""The benchmarks keep working: `python -m bench --quick` runs every section against real processes.

Only outcomes are asserted here (every section reports numbers, no revoke is early or lost, no
Slack message is posted twice); the timing targets are the benchmark's business, not the tests'.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from numbers import Real

import pytest
from support import ROOT


def _number(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


def _numeric(section: dict, *paths: str) -> None:
    for path in paths:
        node = section
        for part in path.split("."):
            assert isinstance(node, dict) and part in node, f"missing {path}"
            node = node[part]
        assert _number(node), f"{path} is {node!r}, not a number"


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed (.ci/run installs it)")
    out = tmp_path_factory.mktemp("bench") / "quick.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, f"bench failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    assert "| Measurement |" in proc.stdout  # the markdown table
    return json.loads(out.read_text())


def test_every_section_reports_numbers(results):
    assert results["meta"]["quick"] is True and _number(results["meta"]["machine"]["nproc"])
    _numeric(
        results["click_to_credential"],
        "long_poll_ms.p50",
        "long_poll_ms.p95",
        "long_poll_ms.p99",
        "click_ack_ms.p99",
        "poll_5s_measured_ms.p50",
        "poll_5s_analytic_ms.p99",
        "stages_ms.credential_fetch.p50",
    )
    _numeric(
        results["revocation_lateness"],
        "jit.lateness_ms.p50",
        "jit.lateness_ms.p99",
        "jit.lateness_ms.max",
        "jit.early",
        "rq_enqueue_at.lateness_ms.p99",
        "rq_enqueue_at.early",
        "redis_bytes_per_active_grant",
    )
    _numeric(
        results["mass_expiry"],
        "all_revoked_s",
        "lateness_ms.p99",
        "cpu_ms_per_revocation_with_startup",
        "slack.chat_update_ok",
        "slack.rate_limited_429",
    )
    _numeric(
        results["hook_throughput"],
        "throughput.creates_per_s",
        "throughput.latency_ms.p99",
        "throughput.cpu_ms_per_create",
        "long_poll.click_to_waiter_ms.p99",
        "long_poll.starved",
        "redis_bytes_per_audit_event",
    )
    _numeric(
        results["slack_burst"],
        "all_own_messages_after_s",
        "digests",
        "rate_limited_429",
        "duplicates",
    )
    _numeric(
        results["memory"],
        "redis_bytes_per_active_grant",
        "redis_bytes_per_active_grant_without_audit",
        "redis_bytes_per_audit_event",
        "serve_peak_rss_mb",
        "worker_peak_rss_mb",
    )


def test_the_runs_behind_the_numbers_are_whole(results):
    click = results["click_to_credential"]
    assert click["long_poll_ms"]["n"] == results["meta"]["sizes"]["clicks"]
    revoke = results["revocation_lateness"]
    for side in ("jit", "rq_enqueue_at"):
        assert revoke[side]["missing"] == 0 and revoke[side]["duplicate_revokes"] == 0
        assert revoke[side]["final_statuses"] == {"expired": revoke[side]["grants"]}
    assert revoke["jit"]["early"] == 0  # jit never revokes before expires_at
    mass = results["mass_expiry"]
    assert mass["final_statuses"] == {"expired": mass["grants"]}
    assert mass["requests_with_one_revoked_event"] == mass["revoked_events"] == mass["grants"]
    assert mass["audit_chain_intact"] and mass["lateness_ms"]["min"] >= 0
    assert mass["slack"]["rate_limited_429"] == 0 and mass["slack"]["digests"] == 1
    assert mass["slack"]["chat_update_ok"] > 0
    hook = results["hook_throughput"]
    assert hook["throughput"]["created"] > 0 and hook["throughput"]["errors"] == 0
    assert hook["long_poll"]["failed"] == 0 and hook["long_poll"]["starved"] == 0
    burst = results["slack_burst"]
    assert burst["own_messages_visible"] == burst["requests"] == burst["message_ts_stored"]
    assert burst["duplicates"] == 0
    assert results["memory"]["redis_bytes_per_active_grant"] > 0


def test_record_backend_records_each_call(redis_url, monkeypatch):
    from datetime import UTC, datetime, timedelta

    import redis as redislib

    from workers.backends import registry
    from workers.backends.base import BackendEnv, GrantRequest

    backend_cls = registry()["record"]
    backend = backend_cls(backend_cls.Config(key="bench:t"), BackendEnv(environ={"REDIS_URL": redis_url}))
    t = datetime.now(UTC)
    req = GrantRequest(
        id="r1",
        action="a",
        pipeline="p",
        requested_by=None,
        reason="x",
        ttl_seconds=60,
        issued_at=t,
        expires_at=t + timedelta(seconds=60),
    )
    cred = backend.grant(req)
    backend.revoke(req, cred)
    backend.revoke(req, cred)  # a second revoke is counted, its time not overwritten
    h = redislib.Redis.from_url(redis_url, decode_responses=True).hgetall("bench:t")
    assert int(h["r1:grant"]) == cred["recorded_at_ms"] <= int(h["r1:revoke"])
    assert h["r1:grants"] == "1" and h["r1:revokes"] == "2"
    with pytest.raises(Exception, match="REDIS_URL is not set"):
        backend_cls(backend_cls.Config(key="k"), BackendEnv(environ={})).revoke(req, cred)
