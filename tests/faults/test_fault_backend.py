"""Fault 6: the grant target fails. A failing grant is retried with backoff, then the request fails with
the error in Slack and in the audit; a failing revoke is retried until it succeeds, and the channel is
alerted after JIT_REVOKE_ALERT_AFTER attempts."""

from __future__ import annotations

from datetime import datetime

from faultkit import (
    approve,
    ask,
    audit,
    audit_verifies,
    due,
    flag,
    grant_log,
    rdb,
    thread_notices,
    unflag,
    wait_status,
)
from procs import Stack, wait_until


def _t(entry: dict) -> float:
    return datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()


def test_failing_grant_is_retried_with_backoff_then_fails_visibly():
    with Stack(extra_env={"JIT_GRANT_MAX_ATTEMPTS": "3"}) as stack:
        stack.serve()
        stack.worker()
        flag(stack, "fail-grant")
        rid, token = ask(stack, "quick", ttl="1m", reason="fault 6: target down")
        ts = stack.message_ts(rid)
        approve(stack, rid)
        wait_status(stack, rid, {"failed"}, timeout=45)

        attempts = audit(stack, "grant.attempt_failed", rid)
        assert [a["details"]["attempt"] for a in attempts] == [1, 2, 3]
        assert all("target unavailable" in a["details"]["error"] for a in attempts)
        gaps = [_t(b) - _t(a) for a, b in zip(attempts, attempts[1:], strict=False)]
        # Backoff: 1 s, then 2 s (lower bounds only: a loaded machine is only ever later).
        assert gaps[0] >= 0.9 and gaps[1] >= 1.8, gaps
        [failed] = audit(stack, "request.failed", rid)
        assert "target unavailable" in failed["details"]["error"] and failed["details"]["attempts"] == 3

        body = stack.get(rid, token).json()
        assert body["status"] == "failed" and "target unavailable" in body["error"]
        assert stack.get(rid, token, path="/credential").status_code == 410
        wait_until(
            lambda: (
                "target unavailable" in str(stack.slack.message(ts)["blocks"])
                and stack.slack.message(ts)["text"].endswith("— failed")
            ),
            30,
            0.1,
            "the error in Slack",
        )
        # Nothing left behind: no identity, the clean-up revoke ran, no credential, no more grant work.
        assert grant_log(stack, rid) == []
        wait_until(lambda: grant_log(stack, rid, "revoke"), 30, 0.1, "clean-up revoke")
        assert not rdb(stack).exists(f"jit:cred:{rid}")
        wait_until(
            lambda: not [m for m in due(stack) if m in (f"grant:{rid}", f"revoke:{rid}", f"expire:{rid}")],
            30,
            0.1,
            "no grant work left for the request",
        )
        audit_verifies(stack)


def test_failing_revoke_is_retried_until_it_succeeds_and_alerts_the_channel():
    with Stack(extra_env={"JIT_REVOKE_ALERT_AFTER": "2"}) as stack:
        stack.serve()
        stack.worker()
        rid, token = ask(stack, "quick", ttl="2s", reason="fault 6: revoke fails")
        stack.message_ts(rid)
        approve(stack, rid)
        wait_status(stack, rid, {"active"})
        flag(stack, "fail-revoke")

        wait_until(lambda: len(audit(stack, "revoke.attempt_failed", rid)) >= 2, 30, 0.1, "two failed revokes")
        wait_until(lambda: thread_notices(stack, rid), 15, 0.1, "the alert in the request's thread")
        [alert] = [n for n in thread_notices(stack, rid) if "Revoking this grant has failed" in n]
        assert "2 times" in alert and "target unavailable" in alert
        # still owed, never forgotten; and the pipeline cannot use it past expiry meanwhile
        assert f"expire:{rid}" in due(stack)
        assert stack.get(rid, token, path="/credential").status_code == 410
        assert grant_log(stack, rid, "revoke") == []

        unflag(stack, "fail-revoke")
        wait_status(stack, rid, {"expired"}, timeout=45)  # backoff: the next try is within 4 s + 8 s
        assert len(grant_log(stack, rid, "revoke")) == 1
        assert len(audit(stack, "grant.revoked", rid)) == 1
        assert not rdb(stack).exists(f"jit:cred:{rid}")
        assert f"expire:{rid}" not in due(stack)
        # one alert, not one per attempt
        assert len([n for n in thread_notices(stack, rid) if "Revoking this grant has failed" in n]) == 1
        audit_verifies(stack)
