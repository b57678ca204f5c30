"""A policy with the rules of issue 9 (auto-approval, windows, break glass, per-environment
approvers), built on the common test policy, plus small helpers the policy-rule tests share."""

from __future__ import annotations

import sys

from support import GRANT_SCRIPT, policy_text

EXEC_GRANT = f"""    grant:
      type: exec
      grant_command: ["{sys.executable}", "{GRANT_SCRIPT}", "grant"]
      revoke_command: ["{sys.executable}", "{GRANT_SCRIPT}", "revoke"]
      env_passthrough: [JIT_TEST_STATE]
"""

RULES = (
    """  deploy-staging:
    description: Deploy to staging or dev
    approvers: [U0LEAD1]
    auto_approve: {environment: [staging, dev], ref: "refs/heads/main", max_ttl: 30m, max_per_day: 2}
    ttl: {default: 15m, max: 1h}
"""
    + EXEC_GRANT
    + """  deploy-env:
    description: Deploy to one environment
    approvers_by_environment:
      prod: [U0LEAD1, U0LEAD2]
      staging: [U0DEV1]
    ttl: {default: 15m, max: 1h}
"""
    + EXEC_GRANT
    + """  change-db:
    description: Change the production database
    windows: ["mon-fri 09:00-18:00 Europe/Paris"]
    approvers: [U0LEAD1, U0LEAD2]
    approvals_required: 2
    ttl: {default: 1h, max: 2h}
"""
    + EXEC_GRANT
)

BREAK_GLASS = """break_glass:
  approvers: [U0ONCALL, S0SECURITY]
  security_channel: C0SECURITY
  max_ttl: 10m
"""


def rules_policy_text(state_dir: str, oidc_issuer: str | None = None) -> str:
    text = policy_text(state_dir)
    text = text.replace(
        "actions: [deploy-prod, read-secret, quick]",
        "actions: [deploy-prod, read-secret, quick, deploy-staging, deploy-env, change-db]",
    )
    if oidc_issuer:
        text = text.replace(
            "actions:\n  deploy-prod:",
            f"""  gh-deploy:
    oidc:
      issuer: {oidc_issuer}
      audience: jit-bot
      claims: {{repository: acme/deploy}}
    actions: [deploy-staging, deploy-env]
actions:
  deploy-prod:""",
            1,
        )
    text = text.replace("\nactions:\n", "\n" + BREAK_GLASS + "actions:\n", 1)
    return text + RULES


def entries(rt, event: str | None = None, request_id: str | None = None) -> list[dict]:
    """Audit entry bodies, oldest first, optionally of one event / request."""
    out = []
    for e in rt.audit.entries():
        b = e.body
        if event and b["event"] != event:
            continue
        if request_id and b.get("request_id") != request_id:
            continue
        out.append(b)
    return out


def verified(environment: str | None = "staging", ref: str | None = "refs/heads/main", **more) -> dict:
    """What an OIDC-verified caller hands AccessService.create."""
    context = {"repository": "acme/deploy", **more}
    if environment is not None:
        context["environment"] = environment
    if ref is not None:
        context["ref"] = ref
    return {"context": context, "requested_by": "octocat"}
