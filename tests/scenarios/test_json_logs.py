"""Logs: one JSON object a line, carrying the request id of the job or HTTP request that wrote it."""

from __future__ import annotations

import io
import json
import logging
import time

import pytest

from bot import logs


@pytest.fixture
def json_lines():
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    logs.setup("INFO")
    buf = io.StringIO()
    root.handlers[0].setStream(buf)  # the JSON handler logs.setup installed, writing here

    def lines() -> list[dict]:
        text, _ = buf.getvalue(), buf.seek(0)
        buf.truncate()
        return [json.loads(ln) for ln in text.splitlines() if ln.strip()]

    yield lines
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_a_failing_job_logs_json_with_its_request_id(jit, state_dir, json_lines):
    (state_dir / "fail-grant").write_text("")
    rid = jit.ask("quick", reason="logs", ttl="1m")["id"]
    jit.work()
    assert jit.approve(rid, "U0LEAD1").status_code == 200
    deadline = time.time() + 30
    found = []
    while not found:
        assert time.time() < deadline, "no log line for the failed grant"
        jit.work()
        found = [e for e in json_lines() if e["logger"] == "jit.jobs" and "failed" in e["event"]]
    line = found[0]
    assert line["request_id"] == rid and line["job"] == "grant" and line["level"] == "warning"
    assert line["time"].endswith("Z")


def test_http_request_lines_carry_the_callers_request_id(app, json_lines):
    @app.get("/v1/requests/<request_id>/log-probe")
    def probe(request_id: str):
        logging.getLogger("jit.test").info("probing")
        return {"ok": True}

    client = app.test_client()
    resp = client.get("/v1/requests/abc123/log-probe", headers={"X-Request-Id": "trace-42"})
    assert resp.headers["X-Request-Id"] == "trace-42"
    resp = client.get("/v1/requests/def456/log-probe", headers={"X-Request-Id": "<script>"})
    fresh = resp.headers["X-Request-Id"]
    assert fresh and fresh != "<script>"  # an unsafe id is replaced, not echoed

    probes = [e for e in json_lines() if e["event"] == "probing"]
    assert [(e["request_id"], e["http_request_id"]) for e in probes] == [
        ("abc123", "trace-42"),
        ("def456", fresh),
    ]
    logging.getLogger("jit.test").info("after")
    assert "request_id" not in json_lines()[-1]  # the context ended with the request
