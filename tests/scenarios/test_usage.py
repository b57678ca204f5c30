"""Usage seen from the target side: a resource server checking a token is counted, audited (within
bounds however hard it calls) and shown on the request's message; what a backend saw at revoke is
kept once, sealed, audited as `session.usage`, shown by `/jit audit <id>` and exported whole."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from fakes.slack import slash_command
from freezegun import freeze_time
from redis_state import orphans
from support import INTROSPECTION_TOKEN

from bot.cli import main as jit_cli
from bot.store import keys
from bot.store.usage import CHECKS_AUDITED, WINDOW_MS
from workers.upkeep import AuditUpkeep


@pytest.fixture
def jit_env(jit_env, monkeypatch):
    monkeypatch.setenv("JIT_USAGE_UPDATE_MS", "1000")
    return {**jit_env, "JIT_USAGE_UPDATE_MS": "1000"}


def introspect(jit, token: str) -> dict:
    resp = jit.http.post(
        "/v1/introspect", data={"token": token}, headers={"Authorization": f"Bearer {INTROSPECTION_TOKEN}"}
    )
    assert resp.status_code == 200
    return resp.get_json()


def active_token(jit) -> tuple[str, str]:
    rid = jit.ask("read-secret", ttl="30m")["id"]
    jit.work()
    jit.approve(rid, "U0LEAD1")
    jit.work()
    return rid, jit.credential(rid).get_json()["credential"]["token"]


def events(jit, rid: str, name: str) -> list[dict]:
    return [e.body for e in jit.rt.audit.entries_for_request(rid, limit=500) if e.body["event"] == name]


def window_end_ms() -> int:
    """The end of the usage window running now (windows are aligned to multiples of WINDOW_MS)."""
    return (int(datetime.now(UTC).timestamp() * 1000) // WINDOW_MS + 1) * WINDOW_MS


def message_text(jit, rid: str) -> str:
    req = jit.rt.store.get(rid)
    return json.dumps(jit.slack.message(req.message_ts)["blocks"]) if req.message_ts else ""


def test_token_checks_are_counted_audited_and_shown_on_the_message(jit):
    rid, token = active_token(jit)
    assert jit.rt.store.get(rid).message_ts
    for _ in range(14):
        assert introspect(jit, token)["active"] is True

    # the message catches up through the paced update path (one update per JIT_USAGE_UPDATE_MS)
    jit.drain(lambda: "checked 14 times by secrets-api" in message_text(jit, rid), what="the count on the message")

    checked = events(jit, rid, "session.token_checked")
    assert len(checked) == CHECKS_AUDITED  # the checks after the first few are counted only
    assert all(c["actor"] == "resource-server:secrets-api" and c["details"]["active"] is True for c in checked)
    assert [c["details"]["checks"] for c in checked] == list(range(1, CHECKS_AUDITED + 1))

    # once their window is over, the next check writes the sum of what was not written one by one
    # (checks that straddled a window boundary are summed per window: the sums add up)
    with freeze_time(datetime.fromtimestamp(window_end_ms() / 1000 + 1, UTC)):
        assert introspect(jit, token)["active"] is True
    summed = events(jit, rid, "session.token_checks_suppressed")
    assert sum(e["details"]["count"] for e in summed) == 14 - CHECKS_AUDITED
    assert {e["details"]["resource_server"] for e in summed} == {"secrets-api"}

    jit.release(rid)
    jit.work()
    assert introspect(jit, token) == {"active": False}  # a check after the end counts too
    (usage,) = events(jit, rid, "session.usage")
    assert usage["details"]["backend"] == "token"
    assert usage["details"]["checks"]["secrets-api"]["count"] == 15
    assert usage["details"]["checks"]["secrets-api"]["active"] == 15
    assert token not in json.dumps(usage)

    # a revoke that runs again (at-least-once) records no second summary
    jit.rt.store.set_fields(rid, revoke_pending="1")
    jit.rt.revokes.complete(rid, jit.rt.backend_for)
    assert len(events(jit, rid, "session.usage")) == 1
    assert orphans(jit.rt.redis) == []  # every usage key has a TTL or hangs off an index


def test_a_resource_server_calling_in_a_loop_cannot_flood_the_trail(jit):
    """Each check costs one small script: a counter per request and resource server, the first
    CHECKS_AUDITED checks written one by one, then one sum per window, and one message update per
    JIT_USAGE_UPDATE_MS — however many calls come. The request's own entries stay in its index."""
    rid, token = active_token(jit)
    before = jit.rt.redis.dbsize()
    for _ in range(300):
        assert introspect(jit, token)["active"] is True
    assert len(events(jit, rid, "session.token_checked")) == CHECKS_AUDITED
    assert events(jit, rid, "request.created") and events(jit, rid, "grant.issued")
    assert jit.rt.usage.checks(rid)["secrets-api"]["count"] == 300
    assert jit.rt.redis.dbsize() - before <= 5  # counters, window, suppressed, due: a fixed handful
    assert jit.rt.redis.zscore(keys.due(), f"usage:{rid}") is not None  # one pending update, not 300


def test_the_worker_sums_up_checks_when_no_further_check_comes(jit):
    rid, token = active_token(jit)
    for _ in range(CHECKS_AUDITED + 2):
        introspect(jit, token)
    upkeep = AuditUpkeep(jit.rt)
    with freeze_time(datetime.fromtimestamp(window_end_ms() / 1000 + 1, UTC)):
        while upkeep.sum_up_token_checks():  # two sums when the checks straddled a window boundary
            pass
        assert upkeep.sum_up_token_checks() == 0  # each sum is written once
    summed = events(jit, rid, "session.token_checks_suppressed")
    assert sum(e["details"]["count"] for e in summed) == 2
    assert {e["actor"] for e in summed} == {"resource-server:secrets-api"}


def test_a_token_for_another_audience_counts_as_an_inactive_check(jit):
    rid, token = active_token(jit)
    jit.rt.usage.token_checked(jit.rt.store.get(rid), {"billing"}, False, "not meant for this resource server")
    (checked,) = events(jit, rid, "session.token_checked")
    assert checked["details"] == {
        "resource_server": "billing",
        "active": False,
        "checks": 1,
        "why": "not meant for this resource server",
    }


def approved_exec_grant(jit) -> str:
    rid = jit.ask("deploy-prod")["id"]
    jit.work()
    jit.approve_and_wait(rid, "U0LEAD1")
    jit.approve_and_wait(rid, "U0LEAD2")
    jit.work()
    assert jit.rt.store.get(rid).status.value == "active"
    return rid


def test_the_revoke_commands_output_is_the_session_summary_sealed_audited_and_exported(
    jit, state_dir, tmp_path, capsys
):
    rid = approved_exec_grant(jit)
    password = jit.credential(rid).get_json()["credential"]["password"]
    (state_dir / "summary-revoke").write_text("1")  # the revoke command prints what it saw
    jit.release(rid)
    jit.work()

    (usage,) = events(jit, rid, "session.usage")
    d = usage["details"]
    assert d["backend"] == "exec" and d["output_keys"] == ["echo", "last_seen", "queries"]
    assert "10.0.0.5" not in json.dumps(usage)  # values stay out of the trail: sealed with the request
    assert password not in jit.rt.redis.get(keys.usage(rid))  # encrypted at rest
    kept = jit.rt.usage.summary(rid)
    assert kept == {"output": {"queries": 3, "last_seen": "10.0.0.5", "echo": "as ***"}}

    # the message and /jit audit say what was seen, in counts and names
    jit.drain(lambda: "the revoke reported" in message_text(jit, rid), what="the usage line on the message")
    resp = jit.post_slack(slash_command(f"audit {rid}", "U0AUDITOR"))
    shown = json.dumps(resp.get_json())
    assert "session.usage" in shown and "the revoke reported" in shown and "10.0.0.5" not in shown

    out = tmp_path / "export.jsonl"
    assert jit_cli(["audit", "export", "--request", rid, "--output", str(out)]) == 0
    capsys.readouterr()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    (line,) = [row for row in lines if row["event"] == "session.usage"]
    assert line["attachment"]["session_summary"] == kept
    assert line["attachment"]["sha256"] == line["details"]["sha256"]  # tied to the signed entry
    assert password not in out.read_text()
    assert all("attachment" not in row for row in lines if row["event"] != "session.usage")

    # the request's evidence bundle carries it in its session section, verifiable offline
    bundle = tmp_path / "evidence.json"
    assert jit_cli(["audit", "evidence", rid, "--output", str(bundle)]) == 0
    assert jit_cli(["audit", "verify", "--evidence", str(bundle)]) == 0
    capsys.readouterr()
    session = json.loads(bundle.read_text())["session"]
    assert [s["details"]["sha256"] for s in session if s["event"] == "session.usage"] == [d["sha256"]]
    assert password not in bundle.read_text() and "10.0.0.5" not in bundle.read_text()
