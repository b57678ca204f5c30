"""End to end through real processes: jit serve (gunicorn+gevent), jit worker (RQ), redis-server."""

from __future__ import annotations

import json

import pytest
from fakes.slack import block_action
from procs import Stack, wait_until
from support import WEB_TOKEN


@pytest.fixture
def stack():
    with Stack() as s:
        s.serve()
        s.worker()
        yield s


def test_pipeline_gets_and_loses_a_credential(stack):
    r = stack.ask("quick", WEB_TOKEN, ttl="3s", reason="e2e")
    assert r.status_code == 201, r.text
    created = r.json()
    rid, rtok = created["id"], created["request_token"]
    ts = stack.message_ts(rid)
    resp = stack.slack_post(block_action("jit_approve", rid, "U0LEAD1", channel="C0APPROVALS", message_ts=ts))
    assert resp.status_code == 200
    body = stack.wait_status(rid, rtok, {"active"})
    cred = stack.get(rid, rtok, path="/credential")
    assert cred.status_code == 200 and cred.json()["credential"]["username"].startswith("deploy-")
    body = stack.wait_status(rid, rtok, {"expired"}, timeout=30)
    assert body["status"] == "expired"
    assert stack.get(rid, rtok, path="/credential").status_code == 410
    revokes = (stack.state_dir / f"{rid}.revoke").read_text().splitlines()
    assert len(revokes) == 1
    revoked_at = json.loads(revokes[0])["at"]
    from datetime import datetime

    from bot.core.clock import from_ms  # noqa: F401

    expires = datetime.fromisoformat(body["expires_at"].replace("Z", "+00:00")).timestamp()
    assert revoked_at >= expires  # never early
    msg = wait_until(
        lambda: "Expired" in json.dumps(stack.slack.message(ts)["blocks"]) and stack.slack.message(ts),
        message="message shows expired",
    )
    assert "Approve" not in json.dumps(msg["blocks"])
