"""The audit trail leaves the building: every event reaches each configured sink — an HTTP
endpoint (plain JSON lines or Splunk HEC), a syslog collector over TCP or TLS, a file — at least
once and in order, through outages, without holding up the product or the other sinks; and
retention never trims what a sink has not taken (short of a hard cap, which is alerted)."""

from __future__ import annotations

import json
import time

import pytest
from freezegun import freeze_time
from sink_receivers import HttpReceiver, SyslogReceiver, ThrowawayCA, wait_until

from bot.settings import load_settings
from bot.store import keys
from bot.store.audit import AuditKeys
from bot.store.audit_sinks import SinkCursors
from bot.wiring import build
from workers.audit_sinks.delivery import AuditSinks
from workers.upkeep import AuditUpkeep

SINK_SECRET = "sink-hmac-secret-0123456789abcdef"
HEC_TOKEN = "8f0e2c0a-hec-token-do-not-log-5e1d"


@pytest.fixture
def make_rt(jit_env, monkeypatch):
    """A runtime whose settings carry JIT_AUDIT_SINKS (and any other variable given)."""

    def make(sinks: list[dict] | None = None, **env: str):
        monkeypatch.setenv("JIT_AUDIT_SINKS", json.dumps(sinks or []))
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        return build(load_settings())

    return make


@pytest.fixture
def running():
    """Start sink deliveries; stopped at the end of the test whatever happens."""
    started: list[AuditSinks] = []

    def start(rt) -> AuditSinks:
        s = AuditSinks(rt)
        s.start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def http_sink(receiver: HttpReceiver, name: str = "siem", **over) -> dict:
    cfg = {"type": "http", "name": name, "url": receiver.url, "timeout": 2, "backoff_max": "1s"}
    if receiver.hec_token:
        cfg["hec"] = {"token": receiver.hec_token, "index": "jit_audit", "sourcetype": "jit:audit"}
    else:
        cfg["secret"] = SINK_SECRET
    return {**cfg, **over}


def syslog_sink(receiver: SyslogReceiver, name: str = "rsyslog", **over) -> dict:
    return {
        "type": "syslog",
        "name": name,
        "host": "127.0.0.1",
        "port": receiver.port,
        "timeout": 2,
        "backoff_max": "1s",
        **over,
    }


def events(rt, n: int, prefix: str = "r") -> int:
    """n audit events, as the product appends them; returns the head's seq."""
    for i in range(n):
        rt.audit.append("test.event", request_id=f"{prefix}{i:05d}", action="deploy-prod", actor="U0LEAD1")
    return int(rt.audit.head()["seq"])


def audit_keys(rt) -> AuditKeys:
    return AuditKeys(rt.audit.signer.jwks())


# ------------------------------------------------------------------------- each sink, healthy


def test_the_http_sink_posts_signed_json_lines_in_order_and_moves_the_cursor(make_rt, running):
    receiver = HttpReceiver(secret=SINK_SECRET).up()
    try:
        rt = make_rt([http_sink(receiver)])
        before = events(rt, 5)  # already in the trail when the sink is added: it starts from the oldest
        running(rt)
        head = events(rt, 20)
        wait_until(lambda: receiver.received.has_all(head), what="every event at the HTTP receiver")
        receiver.received.check(audit_keys(rt), head)
        assert before == 5
        assert all(h["X-Jit-Event"] == "audit" for h in receiver.requests)
        wait_until(lambda: SinkCursors(rt.redis).cursor("siem")[1] == head, what="the cursor at the head")
    finally:
        receiver.down()


def test_splunk_hec_mode_sends_hec_envelopes_with_the_token(make_rt, running):
    receiver = HttpReceiver(hec_token=HEC_TOKEN).up()
    try:
        rt = make_rt([http_sink(receiver, name="splunk")])
        running(rt)
        head = events(rt, 12)
        wait_until(lambda: receiver.received.has_all(head), what="every event at the HEC receiver")
        receiver.received.check(audit_keys(rt), head)
        for env in receiver.envelopes:
            assert env["index"] == "jit_audit" and env["sourcetype"] == "jit:audit" and env["source"] == "jit"
            assert isinstance(env["time"], float) and abs(env["time"] - time.time()) < 300
            assert env["host"]
    finally:
        receiver.down()


def test_syslog_over_tcp_sends_rfc5424_messages_in_octet_counted_frames(make_rt, running):
    receiver = SyslogReceiver().up()
    try:
        rt = make_rt([syslog_sink(receiver, facility="local4", hostname="jit-worker-1")])
        running(rt)
        rt.audit.append("request.created", request_id="rq1", actor="pipeline:web-ci", details={"reason": "déploiement"})
        head = events(rt, 10)
        wait_until(lambda: receiver.received.has_all(head), what="every event at the syslog collector")
        receiver.received.check(audit_keys(rt), head)
        first = receiver.messages[0]
        assert first["pri"] == str(20 * 8 + 6) and first["version"] == "1"
        assert first["hostname"] == "jit-worker-1" and first["app"] == "jit" and first["msgid"] == "request.created"
        assert first["sd_params"]["seq"] == "1" and first["sd_params"]["request_id"] == "rq1"
        assert json.loads(first["msg"])["details"]["reason"] == "déploiement"
        assert receiver.connections == 1  # one long-lived connection, not one per batch
    finally:
        receiver.down()


def test_syslog_over_tls_verifies_the_collector_against_the_ca_it_is_given(make_rt, running, tmp_path):
    ca = ThrowawayCA(tmp_path / "ca")
    receiver = SyslogReceiver(tls=ca.server_context()).up()
    stranger = ThrowawayCA(tmp_path / "other", name="someone else's CA")
    try:
        rt = make_rt(
            [
                syslog_sink(receiver, name="tls", tls=True, ca_file=str(ca.ca_file), server_name="localhost"),
                syslog_sink(receiver, name="wrong-ca", tls=True, ca_file=str(stranger.ca_file)),
            ]
        )
        running(rt)
        head = events(rt, 8)
        wait_until(lambda: receiver.received.has_all(head), what="every event over TLS")
        # the second sink does not trust the collector's certificate: it sends nothing, and says so
        wait_until(lambda: rt.redis.hget(keys.audit_sink("wrong-ca"), "attempts"), what="the failure recorded")
        assert "TLS handshake failed" in rt.redis.hget(keys.audit_sink("wrong-ca"), "last_error")
        assert SinkCursors(rt.redis).cursor("wrong-ca") == ("0-0", 0)
        receiver.received.check(audit_keys(rt), head)  # each once, from the trusted sink only
        assert sorted(receiver.received.seqs()) == list(range(1, head + 1))
    finally:
        receiver.down()


def test_the_file_sink_appends_json_lines_a_shipper_can_tail_and_jit_can_verify(make_rt, running, tmp_path, capsys):
    from audit_support import cli

    path = tmp_path / "audit.jsonl"
    rt = make_rt([{"type": "file", "name": "local", "path": str(path)}])
    running(rt)
    head = events(rt, 10)
    wait_until(lambda: path.exists() and len(path.read_text().splitlines()) >= head, what="the file")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["seq"] for r in rows] == list(range(1, head + 1))
    # what the sink wrote is what `jit audit export` writes: it joins the trail
    code, out = cli(capsys, "audit", "verify", "--trimmed", str(path))
    assert code == 0 and "audit chain ok" in out, out


# ------------------------------------------------------------------------- outages


@pytest.mark.parametrize("kind", ["http", "syslog", "syslog-tls"])
def test_a_sink_down_for_a_while_then_back_misses_nothing_and_gets_it_in_order(make_rt, running, tmp_path, kind):
    if kind == "http":
        receiver = HttpReceiver(secret=SINK_SECRET)
        cfg = http_sink(receiver)
    elif kind == "syslog":
        receiver = SyslogReceiver()
        cfg = syslog_sink(receiver)
    else:
        ca = ThrowawayCA(tmp_path / "ca")
        receiver = SyslogReceiver(tls=ca.server_context())
        cfg = syslog_sink(receiver, tls=True, ca_file=str(ca.ca_file), server_name="localhost")
    receiver.up()
    try:
        rt = make_rt([cfg])
        running(rt)
        first = events(rt, 10, "a")
        wait_until(lambda: receiver.received.has_all(first), what="the first events")
        receiver.down()
        middle = events(rt, 25, "b")  # appended while the sink is down: none lost, product unaffected
        wait_until(lambda: rt.redis.hget(keys.audit_sink(cfg["name"]), "attempts"), what="a failed attempt")
        assert not receiver.received.has_all(middle, start=first + 1)
        receiver.up()
        last = events(rt, 10, "c")
        wait_until(lambda: receiver.received.has_all(last), timeout=30, what="everything after the outage")
        receiver.received.check(audit_keys(rt), last)
        wait_until(
            lambda: rt.redis.hget(keys.audit_sink(cfg["name"]), "failing_since_ms") is None,
            what="the outage recorded as over",
        )
        assert middle == first + 25
    finally:
        receiver.down()


def test_two_sinks_one_down_the_other_keeps_up(make_rt, running, tmp_path):
    down = HttpReceiver(secret=SINK_SECRET)  # never comes up: connection refused
    path = tmp_path / "audit.jsonl"
    rt = make_rt([http_sink(down, name="dead"), {"type": "file", "name": "local", "path": str(path)}])
    running(rt)

    def lines() -> int:
        return len(path.read_text().splitlines()) if path.exists() else 0

    def attempts() -> int:
        return int(rt.redis.hget(keys.audit_sink("dead"), "attempts") or 0)

    events(rt, 1, "first")
    wait_until(lambda: attempts() >= 1, what="the dead sink failing")
    for i in range(5):  # the healthy sink gets each event while the other keeps failing
        head = events(rt, 1, f"x{i}")
        wait_until(lambda head=head: lines() >= head, timeout=5, what=f"event #{head} in the file")
    wait_until(lambda: attempts() >= 2, what="the dead sink retrying")
    assert SinkCursors(rt.redis).cursor("dead")[1] == 0
    assert SinkCursors(rt.redis).cursor("local")[1] == head


def test_a_long_outage_is_alerted_in_the_audit_channel_and_recorded_and_so_is_the_recovery(
    make_rt, running, http, slack, jit
):
    receiver = HttpReceiver(secret=SINK_SECRET)
    rt = make_rt([http_sink(receiver, alert_after="1s")])
    jit.rt = rt
    running(rt)
    events(rt, 3)

    def audit_events(name: str) -> list[dict]:
        return [e.body for e in rt.audit.entries() if e.body["event"] == name]

    wait_until(lambda: audit_events("audit.sink_down"), timeout=20, what="audit.sink_down")
    down = audit_events("audit.sink_down")
    assert len(down) == 1 and down[0]["details"]["sink"] == "siem" and down[0]["outcome"] == "failing"
    assert down[0]["details"]["acknowledged_seq"] == 0

    # /metrics: the failures counted and the lag visible while it is down
    from bot.web.app import create_app

    metrics = create_app(rt).test_client().get("/metrics").get_data(as_text=True)
    assert 'jit_audit_sink_failures_total{sink="siem"}' in metrics
    lag = [line for line in metrics.splitlines() if line.startswith('jit_audit_sink_lag_seconds{sink="siem"}')]
    assert lag and float(lag[0].split()[-1]) > 0

    def posted() -> list:
        return [c for c in slack.calls("chat.postMessage") if "Audit sink `siem`" in str(c.params.get("text"))]

    jit.drain(posted, what="the alert posted in the audit channel")  # the owed message, sent by a job
    post = posted()[0]
    assert post.params["channel"] == rt.policy.audit_channel() and "failing" in post.params["text"]
    assert HEC_TOKEN not in slack.all_text() and SINK_SECRET not in slack.all_text()

    receiver.up()
    try:
        head = int(rt.audit.head()["seq"])
        wait_until(lambda: audit_events("audit.sink_recovered"), timeout=20, what="audit.sink_recovered")
        wait_until(lambda: receiver.received.has_all(head), what="the backlog delivered")
        assert len(audit_events("audit.sink_down")) == 1  # one alert per outage
        wait_until(lambda: SinkCursors(rt.redis).lag_seconds("siem") == 0, what="the sink caught up (lag 0)")
        jit.drain(lambda: any("taking events again" in str(c.params.get("text")) for c in posted()))
    finally:
        receiver.down()


# ------------------------------------------------------------------------- retention


def test_retention_never_trims_what_a_lagging_sink_has_not_taken(make_rt, running, capsys):
    from audit_support import cli

    receiver = HttpReceiver(secret=SINK_SECRET).up()
    try:
        rt = make_rt([http_sink(receiver)])
        with freeze_time("2020-01-01T00:00:00Z"):
            events(rt, 10, "old")  # far older than the policy's retention (365 days)
        sinks = running(rt)
        wait_until(lambda: SinkCursors(rt.redis).cursor("siem")[1] == 10, what="the first ten acknowledged")
        sinks.stop()
        receiver.down()  # the sink is down from here on: it lags
        with freeze_time("2020-01-02T00:00:00Z"):
            events(rt, 15, "lag")  # just as old, but not acknowledged

        upkeep = AuditUpkeep(rt)
        assert upkeep.trim() == 10  # the acknowledged ones go, nothing after the sink's cursor
        assert int(rt.audit.anchor()["seq"]) == 10
        assert min(e.seq for e in rt.audit.entries()) == 11
        code, out = cli(capsys, "audit", "verify")
        assert code == 0, out

        receiver.up()
        sinks = running(rt)
        wait_until(lambda: receiver.received.has_all(25), what="the lagging sink catching up")
        receiver.received.check(audit_keys(rt), 25)
        wait_until(lambda: SinkCursors(rt.redis).cursor("siem")[1] >= 25, what="the cursor past the old ones")
        assert upkeep.trim() == 15  # now they may go
    finally:
        receiver.down()


def test_past_the_hard_cap_unsent_events_are_trimmed_alerted_and_audited(make_rt, running, capsys):
    from audit_support import cli

    receiver = HttpReceiver(secret=SINK_SECRET)  # down all along
    rt = make_rt([http_sink(receiver)], JIT_AUDIT_MAX_ENTRIES="100")
    events(rt, 150)
    removed = AuditUpkeep(rt).trim()
    assert removed == 50
    assert rt.redis.xlen(keys.audit_stream()) <= 101  # the cap, plus the entry recording the cut
    cut = [e.body for e in rt.audit.entries() if e.body["event"] == "audit.hard_cap_trimmed"]
    assert len(cut) == 1
    assert cut[0]["outcome"] == "unsent" and cut[0]["details"]["sinks_behind"] == {"siem": 0}
    assert cut[0]["details"]["anchor_seq"] == 50
    alerts = [json.loads(v) for k in rt.redis.scan_iter(keys.notice("*")) if (v := rt.redis.get(k))]
    assert [a["channel"] for a in alerts if "hard cap" in a["text"]] == [rt.policy.audit_channel()]
    assert all(a["alert"] for a in alerts if "hard cap" in a["text"])
    code, out = cli(capsys, "audit", "verify")
    assert code == 0, out  # what remains still verifies from the signed anchor

    # the sink, back, gets what is left in order, starting after the gap it can see by seq
    receiver.up()
    try:
        running(rt)
        head = int(rt.audit.head()["seq"])
        wait_until(lambda: receiver.received.has_all(head, start=51), what="what remains")
        receiver.received.check(audit_keys(rt), head, start=51)
    finally:
        receiver.down()


# ------------------------------------------------------------------------- configuration


def test_a_bad_sink_setting_stops_start_up_with_one_line_that_names_it_and_no_secret(jit_env):
    import os
    import subprocess
    import sys

    from support import ROOT

    bad = [
        {"type": "http", "name": "splunk", "url": "http://splunk.example.com:8088/x", "hec": {"token": HEC_TOKEN}},
    ]
    env = {**os.environ, **jit_env, "JIT_AUDIT_SINKS": json.dumps(bad)}
    proc = subprocess.run(
        [sys.executable, "-m", "bot.cli", "worker", "--burst"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines == [
        "jit: setting JIT_AUDIT_SINKS is invalid: sink #1 (splunk): url must use https "
        "(http is allowed only for 127.0.0.1, ::1 or localhost)"
    ], proc.stderr
    assert HEC_TOKEN not in proc.stderr + proc.stdout
