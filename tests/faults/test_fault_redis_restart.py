"""Fault 4: Redis, run with the persistence flags docker-compose.yml ships (AOF), is killed and started
again on the same port and directory.

Nothing is lost (requests, approvals, grants, due items, audit entries); while Redis is away the server
answers 503 promptly; afterwards the same server and worker processes carry on without a restart.
"""

from __future__ import annotations

import time

import requests
from fakes.slack import block_action, sign
from faultkit import (
    FEW_SECONDS,
    ShippedRedis,
    approve,
    ask,
    audit,
    audit_verifies,
    due,
    grant_log,
    rdb,
    request_posts,
    wait_status,
)
from procs import Stack, wait_until
from redis_state import stored_approvals
from support import WEB_TOKEN


def snapshot(stack: Stack, rids: list[str]) -> dict:
    r = rdb(stack)
    return {
        "requests": {rid: r.hgetall(f"jit:req:{rid}") for rid in rids},
        "approvals": {rid: stored_approvals(r, rid) for rid in rids},
        "creds": {rid: r.get(f"jit:cred:{rid}") for rid in rids},
        "audit": [(sid, f["hash"]) for sid, f in r.xrange("jit:audit")],
        "due": {m: s for m, s in due(stack).items() if not m.startswith("slack:")},
    }


def test_redis_restart_loses_nothing_and_server_answers_503_meanwhile():
    redis = ShippedRedis()
    flags = " ".join(redis.flags)
    assert "--appendonly yes" in flags, f"docker-compose.yml must run Redis with AOF on: {flags}"
    try:
        with Stack(redis=redis.start()) as stack:
            _restart_redis_under_load(stack, redis)
    finally:
        redis.cleanup()


def _restart_redis_under_load(stack: Stack, redis: ShippedRedis) -> None:
    server = stack.serve()
    worker = stack.worker()

    pending, p_token = ask(stack, "deploy-prod", reason="fault 4: half approved")
    stack.message_ts(pending)
    approve(stack, pending, "U0LEAD1")
    wait_until(lambda: len(stored_approvals(rdb(stack), pending)) == 1, 15, message="first approval")
    long, l_token = ask(stack, "quick", ttl="1m", reason="fault 4: outlives the outage")
    short, _ = ask(stack, "quick", ttl="8s", reason="fault 4: expires during the outage")
    for rid in (long, short):
        stack.message_ts(rid)
        approve(stack, rid)
    for rid in (long, short):
        wait_status(stack, rid, {"active"})
    last, last_token = ask(stack, "read-secret", reason="fault 4: created just before the crash")
    rids = [pending, long, short, last]
    before = snapshot(stack, rids)
    assert f"expire:{long}" in before["due"] and f"expire:{short}" in before["due"]
    assert f"timeout:{pending}" in before["due"]

    # With `appendfsync everysec` a crash may lose the last second of writes, never more: let a
    # second pass, then SIGKILL (no shutdown save; only the AOF on disk survives).
    if "--appendfsync always" not in " ".join(redis.flags):
        time.sleep(1.5)
    redis.kill()
    try:
        _answers_503_while_redis_is_away(stack, p_token)
        # stay down past the short grant's expiry
        short_expires = int(before["requests"][short]["expires_ms"])
        wait_until(lambda: time.time() * 1000 > short_expires + 1000, 30, 0.2, "short grant's expiry")
    finally:
        redis.start()  # same port, same directory: loads the AOF

    # The same server process recovers by itself.
    wait_until(lambda: _get(stack.url + "/readyz") == 200, FEW_SECONDS, 0.2, "/readyz back to 200")
    assert server.alive and worker.alive

    after = snapshot(stack, rids)
    for rid in (pending, long, last):  # every field kept (the worker may have added message_ts since)
        assert before["requests"][rid].items() <= after["requests"][rid].items(), rid
    assert after["approvals"] == before["approvals"]
    assert after["creds"][long] == before["creds"][long]
    assert set(before["audit"]) <= set(after["audit"]), "audit entries lost"
    for member, score in before["due"].items():
        if not member.endswith(short):
            assert after["due"].get(member) == score, f"due item {member} lost or moved"
    audit_verifies(stack)

    # The worker carries on: the grant that expired during the outage is revoked...
    wait_status(stack, short, {"expired"}, timeout=30)
    assert len(grant_log(stack, short, "revoke")) == 1
    # the audit entry follows the status change by a moment
    wait_until(lambda: audit(stack, "grant.revoked", short), 15, 0.05, "the revocation audited")
    assert len(audit(stack, "grant.revoked", short)) == 1
    # ...the half-approved request completes with the approval given before the crash...
    approve(stack, pending, "U0LEAD2")
    assert stack.wait_status(pending, p_token, {"active"}, timeout=30)["approvals"]["count"] == 2
    # ...the long grant is untouched, the last request is still there and posted once.
    assert stack.get(long, l_token).json()["status"] == "active"
    assert stack.get(long, l_token, path="/credential").status_code == 200
    assert stack.get(last, last_token).json()["status"] == "pending"
    wait_until(lambda: request_posts(stack, last), 15, message="last request posted")
    assert len(request_posts(stack, last)) == 1
    assert stack.ask("read-secret", WEB_TOKEN, reason="after the outage").status_code == 201
    audit_verifies(stack)


def _get(url: str, **kw) -> int | None:
    try:
        return requests.get(url, timeout=5, **kw).status_code
    except requests.RequestException:
        return None


def _answers_503_while_redis_is_away(stack: Stack, token: str) -> None:
    started = time.monotonic()
    r = requests.get(stack.url + "/readyz", timeout=FEW_SECONDS)
    assert r.status_code == 503, r.text
    r = requests.post(
        stack.url + "/v1/requests",
        json={"action": "read-secret", "reason": "during outage"},
        headers={"Authorization": f"Bearer {WEB_TOKEN}"},
        timeout=FEW_SECONDS,
    )
    assert r.status_code == 503, r.text
    assert r.headers.get("Retry-After")
    assert r.json()["error"] == "unavailable"
    rid_path = "/v1/requests/" + "x" * 20
    for path in (rid_path, rid_path + "?wait=5"):
        r = requests.get(stack.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=FEW_SECONDS)
        assert r.status_code == 503, (path, r.status_code, r.text)
    body, ctype = block_action("jit_approve", "x" * 20, "U0LEAD2", channel="C0PROD", message_ts="1.000001")
    from support import SIGNING_SECRET

    r = requests.post(
        stack.url + "/slack/events",
        data=body,
        headers=sign(SIGNING_SECRET, body, content_type=ctype),
        timeout=FEW_SECONDS,
    )
    assert r.status_code == 503, r.text  # Slack retries a 5xx; a 200 would drop the click silently
    assert time.monotonic() - started < 4 * FEW_SECONDS
