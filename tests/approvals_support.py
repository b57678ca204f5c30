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


#: People on call, as the providers and Slack know them: PagerDuty user id → (email, Slack id).
ONCALL_PEOPLE = {
    "PUA0001": ("ana@example.com", "U0ONA"),
    "PUB0002": ("ben@example.com", "U0ONB"),
    "PUC0003": ("cleo@example.com", "U0ONC"),
    "PUALICE": ("alice@example.com", "U0ALICE"),
}

ONCALL = (
    """  hotfix:
    description: On call may approve
    channel: C0PROD
    approvers:
      - U0LEAD1
      - oncall: {pagerduty: {schedule: PSCHED1, escalation_level: 1}, dm: true}
    ttl: {default: 15m, max: 1h}
"""
    + EXEC_GRANT
    + """  hotfix-pair:
    description: On call and a lead
    approvers:
      - U0LEAD1
      - oncall: {pagerduty: {schedule: PSCHED1}}
    approvals_required: 2
    ttl: {default: 15m, max: 1h}
"""
    + EXEC_GRANT
    + """  ops-fix:
    description: Opsgenie's on call may approve
    approvers:
      - oncall: {opsgenie: {schedule: ops-primary}}
    ttl: {default: 15m, max: 1h}
"""
    + EXEC_GRANT
    + """  self-serve:
    description: Approved at once when the requester is on call (first level only)
    approvers: [U0LEAD1]
    auto_approve:
      - {environment: sandbox}
      - oncall: {pagerduty: {schedule: PSCHED1, escalation_level: 1}}
        max_ttl: 30m
    ttl: {default: 15m, max: 1h}
"""
    + EXEC_GRANT
)


def staff_oncall(pagerduty, opsgenie, slack) -> None:
    """PagerDuty: escalation policy PEP0001 pages schedule PSCHED1 (Ana on call) at level 1 and
    PSCHED2 (Cleo) at level 2. Opsgenie: Ben on call for ops-primary. Slack knows everyone's email."""
    for pd_id, (email, slack_id) in ONCALL_PEOPLE.items():
        pagerduty.user(pd_id, email)
        slack.users[slack_id] = {"email": email}
    pagerduty.on_call("PSCHED1", "PUA0001", start=0)
    pagerduty.on_call("PSCHED2", "PUC0003", start=0)
    pagerduty.escalation_policy("PEP0001", [[("schedule", "PSCHED1")], [("schedule", "PSCHED2")]])
    opsgenie.on_call("ops-primary", "ben@example.com", start=0)
