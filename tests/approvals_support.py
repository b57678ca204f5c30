"""Policies with all-of approval rules and on-call approvers, built on the common test policy."""

from __future__ import annotations

import sys

from support import GRANT_SCRIPT, policy_text

EXEC_GRANT = f"""    grant:
      type: exec
      grant_command: ["{sys.executable}", "{GRANT_SCRIPT}", "grant"]
      revoke_command: ["{sys.executable}", "{GRANT_SCRIPT}", "revoke"]
      env_passthrough: [JIT_TEST_STATE]
"""

#: One production lead AND one security engineer (S0PRODLEADS: U0LEAD3, U0LEAD4; S0SECURITY:
#: U0AUDITOR in the Slack fake).
ALL_OF = (
    """  deploy-critical:
    description: Needs a lead and a security engineer
    channel: C0PROD
    approvals:
      - {name: Leads, from: [S0PRODLEADS, U0LEAD1], count: 1}
      - {name: Security, from: [S0SECURITY, U0CISO], count: 1}
    ttl: {default: 15m, max: 1h}
"""
    + EXEC_GRANT
)


def with_actions(state_dir: str, actions: str, *, extra_top: str = "", pipeline_actions: str = "") -> str:
    """The common test policy plus `actions` (YAML under `actions:`), requestable by web-ci."""
    text = policy_text(state_dir)
    names = [
        line.strip().rstrip(":")
        for line in actions.splitlines()
        if line.startswith("  ") and not line.startswith("   ")
    ]
    text = text.replace(
        "actions: [deploy-prod, read-secret, quick]",
        "actions: [deploy-prod, read-secret, quick, " + ", ".join(names) + "]",
        1,
    )
    if extra_top:
        text = text.replace("\nactions:\n", "\n" + extra_top + "actions:\n", 1)
    return text + actions


def rules_of_request(rt, rid: str) -> dict:
    """The audit entries' `rule` of each event of one request."""
    rt.audit.flush()
    return {e.body["event"]: e.body.get("details", {}).get("rule") for e in rt.audit.entries_for_request(rid)}
