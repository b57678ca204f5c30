"""`jit policy test`, `jit policy explain` and what `jit policy check` says about approval rules:
a policy you can test and explain, every decision path named by the rule that takes it."""

from __future__ import annotations

import subprocess
import sys

import pytest
from fakes.slack import SlackFake
from support import BOT_TOKEN, ROOT

from bot.cli import main

POLICY = """\
defaults: {channel: C0APPROVALS}
people: {alice: U0ALICE}
pipelines:
  web-ci:
    token_sha256: 5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8
    actions: [deploy-prod, hotfix]
break_glass: {approvers: [U0SRE], security_channel: C0SECURITY, max_ttl: 10m}
actions:
  deploy-prod:
    windows: ["sat 10:00-12:00 UTC", "mon-fri 09:00-18:00 Europe/Paris"]
    approvals:
      - {name: Leads, from: [S0PRODLEADS, U0LEAD1], count: 1}
      - {name: Security, from: [S0SECURITY, U0CISO], count: 1}
    grant: {type: token, audience: deploy}
  hotfix:
    approvers: [U0LEAD1, {oncall: {pagerduty: {schedule: PSCHED1}}}]
    auto_approve:
      - {environment: sandbox}
      - oncall: {pagerduty: {schedule: PSCHED1, escalation_level: 1}}
    grant: {type: token, audience: hotfix}
"""

CASES = """\
cases:
  - name: a weekday release needs a lead and security
    pipeline: web-ci
    action: deploy-prod
    at: "2025-01-06T10:00:00+01:00"
    expect:
      allowed: true
      window: open
      approvers: {Leads: [S0PRODLEADS, U0LEAD1], Security: [S0SECURITY, U0CISO]}
      count: {Leads: 1, Security: 1}
      break_glass: true
  - name: at night it is refused, naming the windows
    pipeline: web-ci
    action: deploy-prod
    at: "2025-01-06T23:00:00+01:00"
    expect: {allowed: false, error: outside_window, window: closed, why: "next opening 2025-01-07T08:00:00"}
  - name: break glass may be asked at night
    pipeline: web-ci
    action: deploy-prod
    at: "2025-01-06T23:00:00+01:00"
    break_glass: true
    expect: {allowed: true, window: closed, approvers: {break_glass: [U0SRE]}}
  - name: the on-call requester is approved at once
    pipeline: web-ci
    action: hotfix
    verified: {repository: acme/app, requested_by: alice}
    oncall: {PSCHED1: {U0ALICE: 1}}
    expect: {auto_approved: true, rule: "actions.hotfix.auto_approve[1]"}
  - name: on call only at level 2 goes to humans
    pipeline: web-ci
    action: hotfix
    verified: {repository: acme/app, requested_by: alice}
    oncall: {PSCHED1: {U0ALICE: 2}}
    expect:
      auto_approved: false
      approvers: {Approvers: [U0LEAD1, "on call for PagerDuty schedule PSCHED1 (level 1)"]}
  - name: a requester the pipeline merely names is not trusted to be on call
    pipeline: web-ci
    action: hotfix
    requested_by: alice
    oncall: {PSCHED1: [U0ALICE]}
    expect: {auto_approved: false}
"""


@pytest.fixture
def files(tmp_path):
    policy = tmp_path / "jit-policy.yaml"
    policy.write_text(POLICY)
    (tmp_path / "jit-policy.cases.yaml").write_text(CASES)
    return policy


def jit(*args: str) -> subprocess.CompletedProcess:
    """`jit …` as its own process, as CI runs it."""
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_passing_cases_exit_0(files):
    done = jit("policy", "test", str(files))
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok   ") == 6 and "6 case(s), 0 failed" in done.stdout


def test_a_failing_case_exits_1_with_a_diff(files):
    cases = files.with_name("wrong.yaml")
    cases.write_text(
        CASES.replace("count: {Leads: 1, Security: 1}", "count: {Leads: 2, Security: 1}").replace(
            'rule: "actions.hotfix.auto_approve[1]"', 'rule: "actions.hotfix.auto_approve[0]"'
        )
    )
    done = jit("policy", "test", str(files), "--cases", str(cases))
    assert done.returncode == 1
    out = done.stdout
    assert "FAIL a weekday release needs a lead and security" in out
    assert "     - count: {Leads: 2, Security: 1}\n     + count: {Leads: 1, Security: 1}" in out
    assert "- rule: actions.hotfix.auto_approve[0]" in out and "+ rule: actions.hotfix.auto_approve[1]" in out
    assert "6 case(s), 2 failed" in out


def test_a_cases_file_with_an_unknown_key_is_refused_with_its_place(files, capsys):
    cases = files.with_name("typo.yaml")
    cases.write_text(CASES.replace("expect: {auto_approved: false}", "expect: {auto_aproved: false}"))
    assert main(["policy", "test", str(files), "--cases", str(cases)]) == 1
    assert "cases.5.expect.auto_aproved: unknown key" in capsys.readouterr().err


def test_the_example_policy_passes_its_cases_as_ci_runs_them():
    done = jit("policy", "test", "bot/example-policy.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert ", 0 failed" in done.stdout
    assert "jit policy test bot/example-policy.yaml" in (ROOT / ".ci" / "run").read_text()


def test_explain_prints_the_decision_path_in_words(files, capsys):
    argv = ["policy", "explain", str(files), "--action", "deploy-prod", "--pipeline", "web-ci"]
    assert main([*argv, "--at", "2025-01-04T11:00:00Z"]) == 0
    out = capsys.readouterr().out
    assert "Window actions.deploy-prod.windows[0] ('sat 10:00-12:00 UTC') is open" in out
    assert "Leads (actions.deploy-prod.approvals[0]): 1 of S0PRODLEADS, U0LEAD1" in out
    assert "Every rule must be met, one person counting for one rule only" in out
    assert main([*argv, "--at", "2025-01-04T13:00:00Z"]) == 0
    assert "=> refused: outside_window" in capsys.readouterr().out
    hotfix = ["policy", "explain", str(files), "--action", "hotfix", "--pipeline", "web-ci"]
    assert main([*hotfix, "--verified", "requested_by=alice", "--oncall", "PSCHED1=U0ALICE:1"]) == 0
    assert "=> auto-approved by actions.hotfix.auto_approve[1]" in capsys.readouterr().out


def test_check_counts_user_groups_when_slack_answers_and_warns_when_not(files, capsys, monkeypatch):
    small = files.with_name("small.yaml")
    small.write_text(
        POLICY.replace("[S0SECURITY, U0CISO]", "[S0SECURITY]").replace("[S0PRODLEADS, U0LEAD1]", "[S0PRODLEADS]")
    )
    for k in ("SLACK_BOT_TOKEN", "SLACK_API_URL", "PAGERDUTY_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    assert main(["policy", "check", str(small)]) == 0
    out = capsys.readouterr().out
    assert "actions.deploy-prod.approvals: warning: needs 2 distinct people" in out
    assert "can only be counted when resolvable" in out
    assert "actions.hotfix: warning: PAGERDUTY_TOKEN is not set" in out
    # the same person is the only member of both groups: the rules can never be met
    with SlackFake(token=BOT_TOKEN, usergroups={"S0PRODLEADS": ["U0ONLY"], "S0SECURITY": ["U0ONLY"]}) as slack:
        monkeypatch.setenv("SLACK_BOT_TOKEN", BOT_TOKEN)
        monkeypatch.setenv("SLACK_API_URL", slack.api_url)
        assert main(["policy", "check", str(small)]) == 1
    out = capsys.readouterr().out
    assert (
        "actions.deploy-prod.approvals: needs 2 distinct people (one person counts for one rule only) but at most 1"
        in out
    )
