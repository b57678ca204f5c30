"""All-of rules and on-call approvers through real processes: `jit serve` and `jit worker` against
redis-server, the Slack fake, and PagerDuty / Opsgenie test servers speaking their documented
formats. Clicks are signed Slack payloads; each outcome is waited for, never slept on."""

from __future__ import annotations

import json

import pytest
import redis as redislib
import requests
from approvals_support import ALL_OF, ONCALL, staff_oncall, with_actions
from fakes.opsgenie import OpsgenieFake
from fakes.pagerduty import PagerDutyFake
from fakes.slack import block_action
from procs import Stack, wait_until
from support import WEB_TOKEN
from test_oidc import Issuers, github_claims, mint

OIDC_PIPELINE = """  gh-deploy:
    oidc:
      issuer: {issuer}
      audience: jit-bot
      claims: {{repository: acme/deploy}}
    actions: [self-serve]
"""


@pytest.fixture
def providers():
    with PagerDutyFake() as pd, OpsgenieFake() as og:
        issuers = Issuers()
        try:
            yield pd, og, issuers
        finally:
            issuers.close()


@pytest.fixture
def stack(providers):
    pd, og, issuers = providers
    policy = with_actions("/unused", ALL_OF + ONCALL).replace(
        "\nactions:\n", "\n" + OIDC_PIPELINE.format(issuer=issuers.github) + "actions:\n", 1
    )
    env = {
        "PAGERDUTY_TOKEN": pd.token,
        "PAGERDUTY_API_URL": pd.url,
        "OPSGENIE_API_KEY": og.api_key,
        "OPSGENIE_API_URL": og.url,
        "JIT_ONCALL_CACHE_SECONDS": "1",
    }
    with Stack(policy=policy, extra_env=env) as s:
        staff_oncall(pd, og, s.slack)
        s.serve()
        s.worker()
        yield s


def click(stack: Stack, rid: str, user: str, channel: str = "C0PROD") -> None:
    ts = stack.message_ts(rid)
    resp = stack.slack_post(block_action("jit_approve", rid, user, channel=channel, message_ts=ts))
    assert resp.status_code == 200


def told(stack: Stack, user: str, needle: str) -> str:
    """Wait until `user` was told something containing `needle` (an ephemeral answer to a click)."""
    return wait_until(
        lambda: next((e["text"] for e in stack.slack.ephemerals(user=user) if needle in e["text"]), None),
        message=f"{user} told {needle!r}",
    )


def ask(stack: Stack, action: str) -> tuple[str, str]:
    r = stack.ask(action, WEB_TOKEN)
    assert r.status_code == 201, r.text
    return r.json()["id"], r.json()["request_token"]


def oncall_cache_expired(stack: Stack) -> None:
    r = redislib.Redis.from_url(stack.redis.url)
    wait_until(lambda: not list(r.scan_iter("jit:cache:oncall:*")), message="the on-call cache expired")


def test_a_lead_and_a_security_engineer_through_real_processes(stack):
    rid, rtok = ask(stack, "deploy-critical")
    click(stack, rid, "U0LEAD1")
    told(stack, "U0LEAD1", "your approval is recorded; 1 more needed")
    click(stack, rid, "U0LEAD1")  # the same lead again
    told(stack, "U0LEAD1", "already approved")
    click(stack, rid, "U0LEAD3")  # a second lead
    told(stack, "U0LEAD3", "Still waiting for: Security 0/1")
    assert stack.get(rid, rtok).json()["status"] == "pending"
    ts = stack.message_ts(rid)
    wait_until(
        lambda: "Leads 1/1 ✓ · Security 0/1" in json.dumps(stack.slack.message(ts)["blocks"], ensure_ascii=False)
    )
    click(stack, rid, "U0AUDITOR")  # security, through the S0SECURITY group
    body = stack.wait_status(rid, rtok, {"active"})
    assert sorted(body["approvals"]["by"]) == ["U0AUDITOR", "U0LEAD1"]


def test_a_person_in_both_groups_through_real_processes(stack):
    stack.slack.usergroups["S0SECURITY"].append("U0LEAD3")  # a lead who is also in security
    rid, rtok = ask(stack, "deploy-critical")
    click(stack, rid, "U0LEAD3")
    told(stack, "U0LEAD3", "1 more needed")  # alone, never both rules
    click(stack, rid, "U0LEAD1")  # a lead: U0LEAD3 moves to Security
    stack.wait_status(rid, rtok, {"active"})


def test_pagerduty_on_call_hand_over_and_outage_through_real_processes(stack, providers):
    pd, _, _ = providers
    rid, rtok = ask(stack, "hotfix")
    # the request tells whoever is on call now, in a direct message
    wait_until(
        lambda: any(
            rid in c.params.get("text", "")
            for c in stack.slack.calls("chat.postMessage")
            if c.params.get("channel") == "U0ONA"
        )
    )
    pd.on_call("PSCHED1", "PUB0002", layer=1)  # hand-over: Ben's override layer starts now
    oncall_cache_expired(stack)
    click(stack, rid, "U0ONA")
    told(stack, "U0ONA", "not an approver")
    click(stack, rid, "U0ONB")
    stack.wait_status(rid, rtok, {"active"})
    # done with it: asking for hotfix again while it is active would hand this grant back
    released = requests.delete(
        f"{stack.url}/v1/requests/{rid}", headers={"Authorization": f"Bearer {rtok}"}, timeout=10
    )
    assert released.status_code == 200 and released.json()["status"] == "revoked"

    pd.stop()  # PagerDuty unreachable: fails closed, and says so
    oncall_cache_expired(stack)
    down, down_tok = ask(stack, "hotfix")
    ts = stack.message_ts(down)
    wait_until(lambda: "nobody counts as on call" in json.dumps(stack.slack.message(ts)["blocks"]))
    click(stack, down, "U0ONB")
    told(stack, "U0ONB", "cannot tell whether you are on call")
    assert stack.get(down, down_tok).json()["status"] == "pending"
    click(stack, down, "U0LEAD1")  # named approvers are not affected
    stack.wait_status(down, down_tok, {"active"})


def test_opsgenie_on_call_through_real_processes(stack, providers):
    _, og, _ = providers
    rid, rtok = ask(stack, "ops-fix")
    click(stack, rid, "U0ONA", channel="C0APPROVALS")
    told(stack, "U0ONA", "not an approver")
    og.on_call("ops-primary", "ana@example.com")  # the rotation hands over to Ana
    oncall_cache_expired(stack)
    click(stack, rid, "U0ONA", channel="C0APPROVALS")
    stack.wait_status(rid, rtok, {"active"})


def oidc_ask(stack: Stack, issuers: Issuers, actor: str):
    token = mint(github_claims(issuers.github, actor=actor))
    r = stack.ask("self-serve", token, reason="pager went off")
    assert r.status_code == 201, r.text
    return r.json(), token


def test_a_requester_on_call_at_level_one_is_auto_approved_through_real_processes(stack, providers):
    pd, _, issuers = providers
    pd.on_call("PSCHED2", "PUALICE", layer=1)  # alice on call, but at escalation level 2
    second, token = oidc_ask(stack, issuers, "alice")
    assert second["status"] == "pending"
    pd.on_call("PSCHED1", "PUALICE", layer=1)  # now at level 1
    oncall_cache_expired(stack)
    first, token = oidc_ask(stack, issuers, "alice")
    assert first["status"] == "approved"
    body = stack.wait_status(first["id"], token, {"active"})
    assert body["decided_by"] == "auto"
