"""`jit policy check FILE`: every error with its line (exit 1), warnings about risky grants and
rules that may never be met (exit 0). `jit policy test FILE [--cases C]`: the policy's cases
(exit 1 with a diff when one fails). `jit policy explain FILE --action A --pipeline P`: the
decision path for one request, in words."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml
from pydantic import ValidationError
from slack_sdk import WebClient

from bot.core.clock import now, rfc3339
from bot.core.errors import PolicyError, PolicyFileMissing
from bot.core.policy.approvals import every_rule, rule_findings
from bot.core.policy.cases import CasesFile
from bot.core.policy.cases import run as run_cases
from bot.core.policy.evaluate import Ask, at_time, evaluate
from bot.core.policy.load import MAX_POLICY_BYTES, decode_policy
from bot.core.policy.policy import Policy
from bot.request.gates.gitlab import policy_warnings as gitlab_warnings
from bot.wiring import load_policy, parse_policy


def check(path: str, named: bool = True) -> int:
    """`named`: the file was given on the command line (else it came from JIT_POLICY_FILE or the default)."""
    try:
        policy = load_policy(path)
    except PolicyError as e:
        for line in e.errors:
            hint = "" if named or not isinstance(e, PolicyFileMissing) else " (name one: jit policy check FILE)"
            print(line + hint)
        print(f"{len(e.errors)} error(s) in {path}", file=sys.stderr)
        return 1
    print(f"{path}: ok — {len(policy.actions)} action(s), {len(policy.pipelines)} pipeline(s), sha256 {policy.sha256}")
    for name, (_gtype, config) in policy.grants.items():
        for warning in config.warnings(os.environ):
            print(f"{path}: actions.{name}.grant: warning: {warning}")
    for warning in gitlab_warnings(policy, os.environ):
        print(f"{path}: {warning}")
    return 1 if rule_warnings(policy, path) else 0


# ---------------------------------------------------------------- rules that may never be met


PROVIDER_KEYS = {"pagerduty": "PAGERDUTY_TOKEN", "opsgenie": "OPSGENIE_API_KEY"}


def rule_warnings(policy: Policy, path: str) -> int:
    """Print what `jit policy check` can tell about the approval rules, reading user groups from
    Slack when SLACK_BOT_TOKEN is set; returns how many errors it found."""
    members = _slack_groups()
    errors = 0
    for name, action in policy.actions.items():
        found, warnings = rule_findings(name, action, members)
        for where, what in found:
            print(f"{path}: {where}: {what}")
        errors += len(found)
        for where, what in warnings:
            print(f"{path}: {where}: warning: {what}")
        for provider in sorted({s.provider for r in every_rule(name, action) for s in r.oncall}):
            key = PROVIDER_KEYS[provider]
            if not os.environ.get(key):
                print(f"{path}: actions.{name}: warning: {key} is not set, so its {provider} schedules count nobody")
    return errors


def _slack_groups():
    """User-group members from Slack when a bot token is at hand (None for a group it cannot read)."""
    token = os.environ.get("SLACK_BOT_TOKEN")
    if not token:
        return None
    client = WebClient(token=token, base_url=os.environ.get("SLACK_API_URL") or WebClient.BASE_URL, timeout=10)
    cache: dict[str, set[str] | None] = {}

    def members(group: str) -> set[str] | None:
        if group not in cache:
            try:
                cache[group] = set(client.usergroups_users_list(usergroup=group).get("users") or [])
            except Exception:  # noqa: BLE001 - unreadable (plan, scope, network): counted as unknown
                cache[group] = None
        return cache[group]

    return members


# ---------------------------------------------------------------- jit policy test / explain


def _policy_text(path: str, substitute: dict[str, str]) -> tuple[Policy | None, list[str]]:
    try:
        with open(path, "rb") as f:
            text = decode_policy(f.read(MAX_POLICY_BYTES + 1), path)
        for placeholder, value in substitute.items():
            text = text.replace(placeholder, value)
        return parse_policy(text, source=path), []
    except OSError as e:
        return None, [f"{path}: cannot read policy file: {e.strerror}"]
    except PolicyError as e:
        return None, e.errors


def default_cases(path: str) -> str:
    """`jit-policy.yaml` → `jit-policy.cases.yaml`."""
    p = Path(path)
    return str(p.with_name(p.name.removesuffix(p.suffix) + ".cases.yaml")) if p.suffix else f"{path}.cases.yaml"


def test(path: str, cases_path: str | None = None) -> int:
    """Run the cases against the policy: each expectation that does not hold is shown as a diff
    (`-` expected, `+` what the policy does); exit 1 when any case fails."""
    cases_path = cases_path or default_cases(path)
    try:
        with open(cases_path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
        cases = CasesFile.model_validate(data)
    except OSError as e:
        print(f"{cases_path}: cannot read cases: {e.strerror}", file=sys.stderr)
        return 1
    except yaml.YAMLError as e:
        print(f"{cases_path}: not valid YAML: {getattr(e, 'problem', e)}", file=sys.stderr)
        return 1
    except ValidationError as e:
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top)"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            print(f"{cases_path}: {where}: {msg}", file=sys.stderr)
        return 1
    policy, errors = _policy_text(path, cases.substitute)
    if policy is None:
        for line in errors:
            print(line)
        return 1
    results = run_cases(policy, cases.cases, now())
    for r in results:
        print(f"{'ok  ' if r.passed else 'FAIL'} {r.case.name}")
        for line in r.diff:
            print(f"     {line}")
    failed = sum(not r.passed for r in results)
    print(f"{len(results)} case(s), {failed} failed ({cases_path} against {path})")
    return 1 if failed else 0


__all__ = ["Ask", "at_time", "check", "explain", "test"]


def explain(path: str, ask: Ask) -> int:
    """Print, in words, what the policy does with one request."""
    policy, errors = _policy_text(path, {})
    if policy is None:
        for line in errors:
            print(line)
        return 1
    outcome = evaluate(policy, ask)
    print(f"{ask.action} from {ask.pipeline} at {rfc3339(ask.at)}, under {path} (sha256 {policy.sha256[:12]}):")
    for i, step in enumerate(outcome.steps, start=1):
        print(f"  {step}" if step.startswith("  ") else f"{i:>2}. {step}")
    verdict = (
        f"auto-approved by {outcome.rule}"
        if outcome.auto_approved
        else "goes to the approvers above"
        if outcome.allowed
        else f"refused: {outcome.error}"
    )
    print(f"=> {verdict}")
    return 0
