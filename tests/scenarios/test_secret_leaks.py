"""No secret leaves its place: credentials, bearer tokens, request tokens, the signing secret, the bot
token and JIT_SECRET_KEY never appear in Slack, in a log line, in the audit trail, or in Redis in
the clear — across a whole scenario: grants, a deny, a failing grant, revocations."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import requests
from fakes.slack import block_action, view_submission
from procs import Stack
from redis_state import redis_dump
from support import (
    BOT_TOKEN,
    INTROSPECTION_TOKEN,
    OTHER_TOKEN,
    ROOT,
    SECRET_KEY,
    SIGNING_SECRET,
    WEB_TOKEN,
)

from bot.core.crypto import token_hash
from bot.logs import JsonFormatter
from bot.store import keys


def settle(jit, done, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "work did not settle"
        jit.work()
        time.sleep(0.1)


def leaks(text: str, secrets: dict[str, str]) -> list[str]:
    return [name for name, value in secrets.items() if value and value in text]


def log_lines(records: list[logging.LogRecord]) -> str:
    """Each record as production writes it, plus everything a different formatter might show."""
    fmt = JsonFormatter()
    out = []
    for r in records:
        out.append(fmt.format(r))
        out.append(repr(r.args))
        out.append(repr({k: v for k, v in r.__dict__.items() if k not in ("args", "msg")}))
        if r.exc_info:
            out.append(logging.Formatter().formatException(r.exc_info))
    return "\n".join(out)


def test_no_secret_in_slack_logs_audit_or_redis(jit, slack, caplog, state_dir):
    caplog.set_level(logging.DEBUG)  # the root logger: every logger propagates here
    for name in ("urllib3", "slack_sdk", "slack_bolt", "rq", "rq.worker", "werkzeug", "jit"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    secrets = {
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "JIT_SECRET_KEY": SECRET_KEY,
        "web-ci bearer": WEB_TOKEN,
        "other-ci bearer": OTHER_TOKEN,
    }

    # 1. exec grant: ask (with an idempotent retry), two approvals, fetch, release early
    a = jit.ask(
        "deploy-prod",
        headers={"Idempotency-Key": "deploy-42"},
        context={"repository": "acme/web", "run_url": "https://ci.example/run/1"},
    )
    again = jit.ask(
        "deploy-prod",
        expect=200,
        headers={"Idempotency-Key": "deploy-42"},
        context={"repository": "acme/web", "run_url": "https://ci.example/run/1"},
    )
    assert again["id"] == a["id"]
    secrets["request_token a"] = a["request_token"]
    settle(jit, lambda: jit.rt.store.get(a["id"]).message_ts)
    jit.approve(a["id"], "U0LEAD1")
    jit.approve(a["id"], "U0LEAD3")
    settle(jit, lambda: jit.status(a["id"]).get_json()["status"] == "active")
    cred = jit.credential(a["id"], token=a["request_token"]).get_json()["credential"]
    assert cred["password"].endswith("s3cr3t")
    secrets["exec password"] = cred["password"]
    assert jit.release(a["id"]).get_json()["status"] == "revoked"
    settle(jit, lambda: jit.grants(a["id"], "revoke"))
    assert json.loads(jit.grants(a["id"], "revoke")[0])["request"]["credential"] == cred

    # 2. token grant: the JWT, introspection, then it expires on release
    b = jit.ask("read-secret")
    secrets["request_token b"] = b["request_token"]
    settle(jit, lambda: jit.rt.store.get(b["id"]).message_ts)
    jit.approve(b["id"], "U0LEAD1")
    settle(jit, lambda: jit.status(b["id"]).get_json()["status"] == "active")
    token = jit.credential(b["id"]).get_json()["credential"]["token"]
    secrets["issued JWT"] = token
    secrets["issued JWT signature"] = token.rsplit(".", 1)[1]
    active = jit.http.post(
        "/v1/introspect", data={"token": token}, headers={"Authorization": f"Bearer {INTROSPECTION_TOKEN}"}
    )
    assert active.get_json()["active"] is True
    # the revoke-now button in Slack
    assert jit.click("jit_revoke", b["id"], "U0LEAD1", button_text="Revoke now").status_code == 200
    settle(jit, lambda: jit.status(b["id"]).get_json()["status"] == "revoked")

    # 3. a deny with a reason
    c = jit.ask("deploy-prod")
    secrets["request_token c"] = c["request_token"]
    settle(jit, lambda: jit.rt.store.get(c["id"]).message_ts)
    jit.click("jit_deny", c["id"], "U0LEAD2", button_text="Deny")
    settle(jit, lambda: slack.calls("views.open"))
    view = slack.calls("views.open")[-1].params["view"]
    jit.post_slack(
        view_submission(
            view["callback_id"], view["private_metadata"], {"reason": {"reason_input": "not now"}}, "U0LEAD2"
        )
    )
    assert jit.status(c["id"]).get_json()["status"] == "denied"

    # 4. a grant that keeps failing
    (state_dir / "fail-grant").write_text("")
    d = jit.ask("deploy-prod")
    secrets["request_token d"] = d["request_token"]
    settle(jit, lambda: jit.rt.store.get(d["id"]).message_ts)
    jit.approve(d["id"], "U0LEAD1")
    jit.approve(d["id"], "U0LEAD2")
    settle(jit, lambda: jit.status(d["id"]).get_json()["status"] == "failed")

    # 5. callers holding the wrong secret, or the right one in the wrong place
    assert jit.status(a["id"], token=OTHER_TOKEN).status_code == 404
    assert jit.status(a["id"], token=b["request_token"]).status_code == 404
    assert jit.http.get(f"/v1/requests/{a['id']}", headers={"Authorization": f"Token {WEB_TOKEN}"}).status_code == 401
    assert (
        jit.http.post(
            "/v1/requests", data=f"token={WEB_TOKEN}", headers={"Authorization": f"Bearer {WEB_TOKEN}"}
        ).status_code
        == 415
    )
    assert (
        jit.post_slack(
            (f"payload={SECRET_KEY}".encode(), "application/x-www-form-urlencoded"), secret=SIGNING_SECRET + "x"
        ).status_code
        == 401
    )
    settle(jit, lambda: "Failed" in json.dumps(slack.message(jit.rt.store.get(d["id"]).message_ts)["blocks"]))

    # Slack: everything the bot sent
    slack_text = slack.all_text()
    assert "not now" in slack_text and a["id"] in slack_text  # the check reads the real traffic
    assert leaks(slack_text, secrets) == []

    # logs: every record of every logger, at DEBUG
    logs = log_lines(caplog.records)
    assert a["id"] in logs and any(r.name.startswith("slack_sdk") for r in caplog.records)  # DEBUG was on
    assert leaks(logs, secrets) == []

    # audit: `jit audit export`, the way an auditor reads it
    export = subprocess.run(
        [sys.executable, "-m", "bot.cli", "audit", "export"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ),
        timeout=60,
    )
    assert export.returncode == 0, export.stderr
    events = [json.loads(line)["event"] for line in export.stdout.splitlines()]
    for expected in ("request.created", "request.denied", "credential.fetched", "grant.revoke_requested"):
        assert expected in events
    assert any(e.startswith("grant.") and "fail" in e for e in events), events
    assert leaks(export.stdout + export.stderr, secrets) == []

    # Redis: credentials and tokens only encrypted or hashed; request tokens not at all (they are
    # made again from JIT_SECRET_KEY when handed back). The scan reads where a token would sit:
    # each request's hash holds its token's hash.
    stored = redis_dump(jit.rt.redis)
    assert leaks(stored, secrets) == []
    for r in (a, b, c, d):
        assert token_hash(r["request_token"]) in stored
        assert not jit.rt.redis.exists(keys.request_token(r["id"]))
    assert leaks(stored, {"exec username": cred["username"]}) == []


def test_log_files_of_real_processes_hold_no_secret():
    """`jit serve` and `jit worker` as shipped (JSON logs, JIT_LOG_LEVEL=DEBUG), through a grant."""
    with Stack(extra_env={"JIT_LOG_LEVEL": "DEBUG"}) as stack:
        stack.serve()
        stack.worker()
        created = stack.ask("read-secret", WEB_TOKEN).json()
        rid = created["id"]
        ts = stack.message_ts(rid)
        assert (
            stack.slack_post(
                block_action("jit_approve", rid, "U0LEAD1", channel="C0APPROVALS", message_ts=ts)
            ).status_code
            == 200
        )
        stack.wait_status(rid, WEB_TOKEN, {"active"})
        token = stack.get(rid, created["request_token"], path="/credential").json()["credential"]["token"]
        assert stack.get(rid, OTHER_TOKEN).status_code == 404
        assert (
            requests.delete(
                f"{stack.url}/v1/requests/{rid}",
                timeout=10,
                headers={"Authorization": f"Bearer {created['request_token']}"},
            ).json()["status"]
            == "revoked"
        )
        logs = "\n".join(Path(p.log_path).read_text(errors="replace") for p in stack.procs)
        assert rid in logs  # the logs are real and carry the request id
        secrets = {
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "JIT_SECRET_KEY": SECRET_KEY,
            "bearer": WEB_TOKEN,
            "other bearer": OTHER_TOKEN,
            "request_token": created["request_token"],
            "JWT": token,
        }
        assert leaks(logs, secrets) == []
