"""Usage seen from the target side, through real processes (jit serve, jit worker, redis-server, a
real PostgreSQL): a resource server's checks reach the request's message; a PostgreSQL grant's
session is recorded at its release, before its role is dropped."""

from __future__ import annotations

import json
import secrets

import psycopg
import pytest
import redis as redislib
import requests
from fakes.slack import block_action
from procs import Stack, wait_until
from psycopg import sql
from support import INTROSPECTION_TOKEN, WEB_TOKEN, policy_text

from bot.store.audit import AuditLog

SHARED_PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


@pytest.fixture
def pg_database():
    """A throwaway database and grant role on the shared server (dropped at teardown)."""
    try:
        admin = psycopg.connect(**SHARED_PG, dbname="postgres", autocommit=True, connect_timeout=3)
    except psycopg.Error as e:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432 ({type(e).__name__})")
    tag = secrets.token_hex(4)
    db, role = f"jit_e2e_{tag}", f"jit_e2e_reader_{tag}"
    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    admin.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    with psycopg.connect(**SHARED_PG, dbname=db, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int)")
        conn.execute(sql.SQL("GRANT SELECT ON items TO {}").format(sql.Identifier(role)))
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{db}", db, role
    finally:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db,))
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
        leftovers = admin.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (f"jit_e2e_{tag}%",))
        for (name,) in leftovers.fetchall():
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        admin.close()


def policy(role: str, tag: str) -> str:
    text = policy_text("unused").replace(
        "actions: [deploy-prod, read-secret, quick]", "actions: [deploy-prod, read-secret, quick, pg-read]"
    )
    return (
        text
        + f"""  pg-read:
    description: Read the items table
    approvers: [U0LEAD1]
    ttl: {{default: 10m, max: 30m}}
    grant:
      type: postgres
      dsn_env: JIT_E2E_PG_DSN
      grant_roles: [{role}]
      username_template: jit_e2e_{tag}_{{id8}}
"""
    )


@pytest.fixture
def stack(pg_database):
    dsn, _, role = pg_database
    tag = role.removeprefix("jit_e2e_reader_")
    env = {
        "JIT_E2E_PG_DSN": dsn,
        "JIT_INTROSPECTION_TOKENS": f"secrets-api={INTROSPECTION_TOKEN}",
        "JIT_USAGE_UPDATE_MS": "1000",
    }
    with Stack(extra_env=env, policy=policy(role, tag)) as s:
        s.serve()
        s.worker()
        yield s


def approved(stack, action: str) -> tuple[str, str, str]:
    r = stack.ask(action, WEB_TOKEN, reason="e2e usage")
    assert r.status_code == 201, r.text
    rid, rtok = r.json()["id"], r.json()["request_token"]
    ts = stack.message_ts(rid)
    click = block_action("jit_approve", rid, "U0LEAD1", channel="C0APPROVALS", message_ts=ts)
    assert stack.slack_post(click).status_code == 200
    stack.wait_status(rid, rtok, {"active"})
    return rid, rtok, ts


def blocks(stack, ts: str) -> str:
    return json.dumps(stack.slack.message(ts)["blocks"])


def usage_events(stack, rid: str) -> list[dict]:
    audit = AuditLog(redislib.Redis.from_url(stack.redis.url, decode_responses=True))
    return [e.body for e in audit.entries_for_request(rid) if e.body["event"] == "session.usage"]


def test_a_resource_servers_checks_reach_the_message(stack):
    rid, rtok, ts = approved(stack, "read-secret")
    token = stack.get(rid, rtok, path="/credential").json()["credential"]["token"]
    for _ in range(3):
        resp = requests.post(
            stack.url + "/v1/introspect",
            data={"token": token},
            headers={"Authorization": f"Bearer {INTROSPECTION_TOKEN}"},
            timeout=10,
        )
        assert resp.json()["active"] is True
    wait_until(lambda: "checked 3 times by secrets-api" in blocks(stack, ts), message="the checks on the message")
    assert token not in stack.slack.all_text()


def test_a_postgres_grants_session_is_recorded_before_its_role_goes(stack, pg_database):
    rid, rtok, ts = approved(stack, "pg-read")
    cred = stack.get(rid, rtok, path="/credential").json()["credential"]
    job = psycopg.connect(cred["dsn"], autocommit=True, connect_timeout=5, application_name="e2e-job")
    job.execute("SELECT count(*) FROM items")
    released = requests.delete(
        f"{stack.url}/v1/requests/{rid}", headers={"Authorization": f"Bearer {rtok}"}, timeout=10
    )
    assert released.status_code == 200
    (usage,) = wait_until(lambda: usage_events(stack, rid), message="the session.usage entry")
    d = usage["details"]
    assert d["backend"] == "postgres" and d["sessions"] == 1
    assert d["session_list"][0]["application_name"] == "e2e-job"
    assert d["session_list"][0]["client_addr"] == "127.0.0.1"
    with pytest.raises(psycopg.OperationalError):
        job.execute("SELECT 1")  # the revoke ended the session it recorded
    job.close()
    with psycopg.connect(**SHARED_PG, dbname="postgres") as admin:
        gone = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (cred["username"],)).fetchone() is None
    assert gone
    wait_until(lambda: "1 session (e2e-job from 127.0.0.1)" in blocks(stack, ts), message="the usage on the message")
    assert cred["password"] not in stack.slack.all_text()
