"""An idle worker is not a late worker: after minutes without work, a revocation still happens on
time and a new request's Slack message still goes out at once.

Real time, real processes. RQ's worker blocks in its dequeue for minutes; when its connection's
socket timeout was shorter, every idle 30 s ended in "Timeout reading from socket", which RQ
treats as a lost connection and answers with sleeps of 1, 2, 4 … 32 s (one idle stretch after
another) while due work waited. The expiry below falls about 3 min 45 s into an idle stretch, inside
the 32 s sleep that bug produced; the request asked just after lands in the same sleep.
"""

from __future__ import annotations

import time

from faultkit import FEW_SECONDS, approve, ask, audit, policy_with, rdb, wait_status
from procs import Stack, wait_until
from support import GRANT_SCRIPT

IDLE_S = 225  # from the grant to its expiry, with nothing else for the worker to do

LONG_ACTION = f"""\
  long:
    description: A grant that expires after minutes of quiet
    approvers: [U0LEAD1]
    ttl: {{default: {IDLE_S}s, max: 10m}}
    grant:
      type: exec
      grant_command: ["{{python}}", "{GRANT_SCRIPT}", "grant"]
      revoke_command: ["{{python}}", "{GRANT_SCRIPT}", "revoke"]
      env_passthrough: [JIT_TEST_STATE]
"""


def test_after_minutes_idle_a_revocation_is_on_time_and_a_post_goes_out_at_once():
    import sys

    with Stack() as stack:
        stack.policy_file.write_text(
            policy_with(str(stack.state_dir), LONG_ACTION.replace("{python}", sys.executable), ["long"])
        )
        # The worker starts first, so it is the process that records the policy and queues the
        # audit-channel notice: its RQ connection pool holds a connection from before RQ started.
        stack.worker(concurrency=1)
        wait_until(lambda: rdb(stack).get("jit:policy:current"), FEW_SECONDS, message="the policy recorded")
        stack.serve()
        rid, _ = ask(stack, "long", reason="idle test")
        stack.message_ts(rid)
        approve(stack, rid)
        wait_status(stack, rid, {"active"}, FEW_SECONDS)

        # Nothing happens now until the grant expires, minutes later.
        wait_status(stack, rid, {"expired"}, IDLE_S + 60)
        (revoked,) = audit(stack, "grant.revoked", rid)
        lateness_ms = revoked["details"]["lateness_ms"]
        assert 0 <= lateness_ms < 2000, f"revoked {lateness_ms} ms after its expiry, after {IDLE_S} s idle"

        # A request asked right after (the worker idle again, but for its own message) is posted at once.
        time.sleep(8)
        asked = time.time()
        second, _ = ask(stack, "quick", reason="after the quiet")
        stack.message_ts(second, timeout=60)
        posted = wait_until(
            lambda: [c for c in stack.slack.calls("chat.postMessage") if second in str(c.params.get("text", ""))],
            60,
            message="the second request's post",
        )[0]
        delay = posted.time - asked
        assert delay < 3.0, f"the post went out {delay:.1f} s after the request"
