"""The audit outbox: a state change's Lua pushes its audit event in the same atomic step, and the
next flush (the caller's, anyone's append, or the worker's upkeep) chains it, in outbox order."""

from __future__ import annotations

import json

import pytest
from audit_support import bodies
from freezegun import freeze_time

from bot.store import keys

# How a transition's Lua script builds its outbox item (bot/store/requests.py): the body JSON
# comes from Python (AuditLog.event_body), the patch is a Lua table encoded by Redis's cjson.
PUSH = """
local patch = cjson.decode(ARGV[2])
redis.call('RPUSH', KEYS[1], '{"body":' .. ARGV[1] .. ',"patch":' .. cjson.encode(patch) .. '}')
"""
PUSH_VERBATIM = """
redis.call('RPUSH', KEYS[1], '{"body":' .. ARGV[1] .. ',"patch":' .. ARGV[2] .. '}')
"""


def transition_died(rt, body: str, patch: dict | str = "{}") -> None:
    """A transition pushed its event and its process died before flushing."""
    if isinstance(patch, dict):
        rt.redis.eval(PUSH, 1, keys.audit_outbox(), body, json.dumps(patch))
    else:
        rt.redis.eval(PUSH_VERBATIM, 1, keys.audit_outbox(), body, patch)


def test_the_outbox_is_a_redis_list_named_in_keys():
    assert keys.audit_outbox() == "jit:audit:outbox"


def test_event_body_is_the_scrubbed_event_at_the_clock_time(rt):
    with freeze_time("2026-11-25T21:40:00.123Z"):
        raw = rt.audit.event_body(
            "request.created",
            request_id="req0001",
            action="deploy-prod",
            actor="pipeline:web-ci",
            details={"reason": "release", "token": "t0p", "nested": {"password": "x"}},
        )
    body = json.loads(raw)
    assert body["time"] == "2026-11-25T21:40:00.123Z"
    assert {k: body[k] for k in ("event", "request_id", "action", "actor", "outcome", "details")} == {
        "event": "request.created",
        "request_id": "req0001",
        "action": "deploy-prod",
        "actor": "pipeline:web-ci",
        "outcome": "ok",
        "details": {"reason": "release", "nested": {}},
    }
    assert "t0p" not in raw and '"x"' not in raw
    # single use: two bodies for the same event are told apart
    assert rt.audit.event_body("request.created") != rt.audit.event_body("request.created")


def test_an_event_left_by_a_crashed_transition_is_chained_by_the_worker_upkeep(rt):
    from workers.upkeep import AuditUpkeep

    body = rt.audit.event_body(
        "request.created",
        request_id="req0001",
        action="deploy-prod",
        actor="pipeline:web-ci",
        details={"reason": "release 4.2", "status": "unknown", "token": "t"},
    )
    transition_died(rt, body, {"status": "pending", "approvals": 3})
    assert rt.redis.llen(keys.audit_outbox()) == 1 and rt.redis.xlen(keys.audit_stream()) == 0

    AuditUpkeep(rt).run_once()

    assert rt.redis.llen(keys.audit_outbox()) == 0
    (made,) = [b for b in bodies(rt.redis) if b["event"] == "request.created"]
    # the patch is merged into details, its keys win, cjson's integers stay integers
    assert made["details"] == {"reason": "release 4.2", "status": "pending", "approvals": 3}
    assert made["actor"] == "pipeline:web-ci" and made["seq"] == 1
    assert [e.body["event"] for e in rt.audit.entries_for_request("req0001")] == ["request.created"]
    assert rt.audit.verify()[1] is None


def test_the_next_append_chains_what_waits_in_the_outbox_first(rt):
    transition_died(
        rt,
        rt.audit.event_body("request.approved", request_id="req0001", actor="U0LEAD1"),
        {"approvals": 2},
    )
    entry = rt.audit.append("grant.issued", request_id="req0001", actor="jit")
    assert [b["event"] for b in bodies(rt.redis)] == ["request.approved", "grant.issued"]
    assert entry.seq == 2 and entry.body["event"] == "grant.issued"
    assert entry.hash == rt.redis.xrange(keys.audit_stream())[1][1]["hash"]
    assert rt.audit.verify() == (2, None)


@pytest.mark.parametrize("patch", ["{}", "[]", {}])
def test_an_empty_patch_changes_nothing(rt, patch):
    transition_died(rt, rt.audit.event_body("request.cancelled", actor="U0LEAD1", details={"why": "x"}), patch)
    assert rt.audit.flush() == 1
    assert bodies(rt.redis)[0]["details"] == {"why": "x"}


def test_a_patch_cannot_smuggle_a_secret_into_the_trail(rt):
    transition_died(rt, rt.audit.event_body("grant.issued", actor="jit"), {"credential": "s3cr3t", "n": 1})
    rt.audit.flush()
    assert bodies(rt.redis)[0]["details"] == {"n": 1}


def test_readers_and_verify_flush_first(rt):
    transition_died(rt, rt.audit.event_body("request.created", request_id="req0002", actor="p"))
    assert [e.body["event"] for e in rt.audit.latest(5)] == ["request.created"]
    transition_died(rt, rt.audit.event_body("request.denied", request_id="req0002", actor="U0LEAD1"))
    assert rt.audit.verify() == (2, None)
    transition_died(rt, rt.audit.event_body("request.x", request_id="req0002", actor="U0LEAD1"))
    assert [e.body["event"] for e in rt.audit.entries_for_request("req0002")][-1] == "request.x"


def test_an_outbox_item_jit_did_not_make_is_recorded_as_rejected_not_as_its_claim(rt):
    """Anyone who can write to Redis can push to the outbox; only bodies sealed by
    event_body (the key holder) become the events they claim to be."""
    real = json.loads(rt.audit.event_body("request.denied", request_id="req0003", actor="U0LEAD1"))
    forged = {**real, "event": "request.approved"}  # seal no longer matches
    made_up = {k: v for k, v in real.items() if k != "seal"}
    for body in (json.dumps(forged), json.dumps(made_up)):
        transition_died(rt, body)
    rt.redis.rpush(keys.audit_outbox(), "not json at all")
    assert rt.audit.flush() == 3
    trail = bodies(rt.redis)
    assert [b["event"] for b in trail] == ["audit.outbox_rejected"] * 3
    assert all(b["outcome"] == "rejected" and b["details"]["sha256"] for b in trail)
    assert rt.audit.verify() == (3, None)


def test_an_outbox_item_pushed_twice_is_chained_once(rt):
    """A script retried after a lost reply, or a replay: the second copy of an event is recorded
    as a duplicate, not as the event again, and the trail still verifies."""
    body = rt.audit.event_body("approval.given", request_id="req0004", actor="U0LEAD1")
    transition_died(rt, body, {"approvals": 1})
    rt.audit.flush()
    transition_died(rt, body, {"approvals": 2})
    transition_died(rt, body, {"approvals": 3})
    assert rt.audit.flush() == 2
    trail = bodies(rt.redis)
    assert [b["event"] for b in trail] == [
        "approval.given",
        "audit.outbox_rejected",
        "audit.outbox_rejected",
    ]
    assert all("duplicate" in b["details"]["why"] for b in trail[1:])
    assert rt.audit.verify() == (3, None)


def test_a_replay_after_the_duplicate_window_is_caught_by_verify(rt, capsys):
    from audit_support import cli

    body = rt.audit.event_body("approval.given", request_id="req0004", actor="U0LEAD1")
    transition_died(rt, body, {"approvals": 1})
    rt.audit.flush()
    rt.redis.delete(keys.audit_nonces())  # the window passed (or someone emptied it)
    transition_died(rt, body, {"approvals": 2})
    rt.audit.flush()
    assert [b["event"] for b in bodies(rt.redis)] == ["approval.given", "approval.given"]
    _, broken = rt.audit.verify()
    assert broken is not None and broken.seq == 2 and "repeat" in broken.reason
    code, out = cli(capsys, "audit", "verify")
    assert code == 1 and "BROKEN at entry 2 " in out


def test_the_running_worker_chains_an_orphaned_outbox_item(tmp_path):
    import redis as redislib
    from procs import Stack, wait_until
    from support import SECRET_KEY, policy_text

    from bot.core.crypto import AuditSigner
    from bot.store.audit import AuditLog

    policy = policy_text(str(tmp_path)) + "audit:\n  channel: C0AUDIT\n  post_head_every: 4s\n"
    with Stack(policy=policy) as stack:
        r = redislib.Redis.from_url(stack.redis.url, decode_responses=True)
        stack.worker(concurrency=1)
        log = AuditLog(r, signer=AuditSigner(SECRET_KEY))
        body = log.event_body("request.created", request_id="req0009", actor="pipeline:web-ci")
        r.eval(PUSH, 1, keys.audit_outbox(), body, json.dumps({"status": "pending"}))
        wait_until(
            lambda: any(b["event"] == "request.created" for b in bodies(r)),
            timeout=60,
            message="the worker's upkeep chained the orphaned item",
        )
        assert r.llen(keys.audit_outbox()) == 0
        assert log.verify()[1] is None


def test_a_flush_told_what_its_script_pushed_chains_it_at_once_or_falls_back(rt):
    """The store may hand flush() the item its script pushed (the script returns it): chained
    without a read when it is alone; when it is not, everything waiting is chained in order."""
    push_and_return = PUSH_VERBATIM + "return '{\"body\":' .. ARGV[1] .. ',\"patch\":' .. ARGV[2] .. '}'"
    rt.audit.append("test.first", actor="jit")  # this process knows the head
    item = rt.redis.eval(push_and_return, 1, keys.audit_outbox(), rt.audit.event_body("a.one"), '{"n":1}')
    assert rt.audit.flush(pushed=item) == 1
    transition_died(rt, rt.audit.event_body("b.orphan"))
    item = rt.redis.eval(push_and_return, 1, keys.audit_outbox(), rt.audit.event_body("c.mine"), "{}")
    assert rt.audit.flush(pushed=item) == 2
    assert [b["event"] for b in bodies(rt.redis)] == ["test.first", "a.one", "b.orphan", "c.mine"]
    assert bodies(rt.redis)[1]["details"] == {"n": 1}
    assert rt.audit.verify() == (4, None)
