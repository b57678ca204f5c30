"""Validating the policy file: every problem reported with its line, by `jit policy check` and
at load; old files stay valid as the format grows."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from policy_rules_support import rules_policy_text
from support import OTHER_TOKEN, ROOT, policy_text

from bot.cli import main as jit_cli
from bot.core.errors import PolicyError
from bot.wiring import load_policy, parse_policy


def errors_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as e:
        parse_policy(text, source="p.yaml")
    return e.value.errors


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """1-based line of the nth line containing `needle`."""
    hits = [i + 1 for i, line in enumerate(text.splitlines()) if needle in line]
    return hits[nth - 1]


BASE = policy_text("/tmp/jit-grants")


def test_the_common_policy_and_the_extended_one_are_valid():
    assert parse_policy(BASE).actions.keys() == {"deploy-prod", "read-secret", "quick"}
    p = parse_policy(rules_policy_text("/tmp/jit-grants"))
    assert p.break_glass_for("change-db").security_channel == "C0SECURITY"
    assert p.approvers_for("deploy-env", "staging") == ["U0DEV1"]
    assert p.windows_for("change-db").specs == ["mon-fri 09:00-18:00 Europe/Paris"]


# ------------------------------------------------------------------ the error classes of the format


def test_unknown_keys_anywhere():
    text = BASE.replace("approvals_required: 2", "approvals_required: 2\n    colour: blue")
    text = text.replace("  pending_timeout: 30m", "  pending_timeout: 30m\n  shade: dark")
    errs = errors_of(text)
    assert f"p.yaml:{line_of(text, 'colour')}: actions.deploy-prod.colour: unknown key" in errs
    assert f"p.yaml:{line_of(text, 'shade')}: defaults.shade: unknown key" in errs


def test_unknown_keys_in_the_new_sections():
    text = rules_policy_text("/tmp").replace("max_per_day: 2}", "max_per_day: 2, branch: main}")
    text = text.replace("  max_ttl: 10m\n", "  max_ttl: 10m\n  pager: yes\n", 1)
    errs = errors_of(text)
    assert any("actions.deploy-staging.auto_approve.branch: unknown key" in e for e in errs)
    assert any(e.endswith("break_glass.pager: unknown key") for e in errs)


def test_unknown_grant_types():
    text = BASE.replace("type: token", "type: carrier-pigeon")
    errs = errors_of(text)
    assert len(errs) == 1
    assert errs[0].startswith(f"p.yaml:{line_of(text, 'carrier-pigeon')}: actions.read-secret.grant.type:")
    assert "unknown grant type 'carrier-pigeon' (known:" in errs[0] and "exec" in errs[0]


def test_approvals_required_larger_than_the_approver_set():
    text = BASE.replace("approvers: [U0LEAD1, U0ALICE]", "approvers: [U0LEAD1, U0ALICE]\n    approvals_required: 3")
    errs = errors_of(text)
    assert errs == [
        f"p.yaml:{line_of(text, 'approvals_required: 3')}: actions.read-secret.approvals_required: "
        "needs 3 distinct approvers but only 2 can ever approve"
    ]


def test_approvals_required_per_environment():
    text = rules_policy_text("/tmp").replace(
        "      staging: [U0DEV1]\n    ttl: {default: 15m, max: 1h}",
        "      staging: [U0DEV1]\n    approvals_required: 2\n    ttl: {default: 15m, max: 1h}",
    )
    errs = errors_of(text)
    assert errs == [
        f"p.yaml:{line_of(text, 'staging: [U0DEV1]')}: actions.deploy-env.approvers_by_environment.staging: "
        "needs 2 distinct approvers but only 1 can ever approve"
    ]


def test_duplicate_names():
    text = BASE.replace("  other-ci:\n", "  web-ci:\n", 1)  # a second pipeline called web-ci
    dup_line = line_of(text, "  web-ci:", 2)
    errs = errors_of(text)
    assert (
        f"p.yaml:{dup_line}: pipelines.web-ci: duplicate key 'web-ci' (first at line {line_of(text, '  web-ci:')})"
        in errs
    )

    action = BASE + BASE[BASE.index("  read-secret:\n    description") :]  # read-secret twice
    errs = errors_of(action)
    assert any("actions.read-secret: duplicate key 'read-secret'" in e for e in errs)

    approver = BASE.replace("approvers: [U0LEAD1, U0ALICE]", "approvers: [U0LEAD1, U0ALICE, U0LEAD1]")
    assert any("actions.read-secret.approvers: an approver is listed twice" in e for e in errors_of(approver))

    import hashlib

    same = BASE.replace(
        hashlib.sha256(OTHER_TOKEN.encode()).hexdigest(), BASE.split("token_sha256: ")[1].split("\n")[0]
    )
    assert any("pipelines.other-ci.token_sha256: same token as pipeline 'web-ci'" in e for e in errors_of(same))


def test_every_error_is_reported_not_just_the_first():
    text = BASE.replace("type: token", "type: carrier-pigeon").replace(
        "approvers: [U0LEAD1, U0ALICE]", "approvers: [U0LEAD1, U0ALICE]\n    approvals_required: 3"
    )
    errs = errors_of(text)
    assert len(errs) == 2
    assert any("carrier-pigeon" in e for e in errs) and any("needs 3 distinct approvers" in e for e in errs)
    schema = BASE.replace("approvals_required: 2", "approvals_required: 2\n    colour: blue").replace(
        "  pending_timeout: 30m", "  pending_timeout: soon"
    )
    errs = errors_of(schema)
    assert len(errs) == 2 and any("colour" in e for e in errs) and any("pending_timeout" in e for e in errs)


def test_ids_and_hashes_say_what_they_should_be_not_a_regular_expression():
    text = (
        BASE.replace("channel: C0PROD", 'channel: "#prod-deploys"')
        .replace("approvers: [U0LEAD1, U0ALICE]", "approvers: [U0LEAD1, alice]")
        .replace("alice: U0ALICE", "alice: alice.smith")
        .replace(hashlib.sha256(OTHER_TOKEN.encode()).hexdigest(), OTHER_TOKEN)
    )
    errs = errors_of(text)
    assert errs == [
        f"p.yaml:{line_of(text, 'alice.smith')}: people.alice: must be a Slack user ID such as U0123ABCD, "
        "not a name (a profile's ⋮ menu → Copy member ID)",
        f"p.yaml:{line_of(text, OTHER_TOKEN)}: pipelines.other-ci.token_sha256: must be the SHA-256 of the token, "
        'not the token: printf %s "$TOKEN" | sha256sum',
        f"p.yaml:{line_of(text, '#prod-deploys')}: actions.deploy-prod.channel: must be a Slack channel ID such as "
        "C0123ABCD, not a channel name (Slack shows it at the bottom of the channel's details)",
        f"p.yaml:{line_of(text, 'U0LEAD1, alice')}: actions.read-secret.approvers.1: must be a Slack user ID such "
        "as U0123ABCD or a user group ID such as S0123ABCD, not a name (a profile's ⋮ menu → Copy member ID)",
    ]
    assert not any("^" in e or OTHER_TOKEN in e.partition(": ")[2] for e in errs)  # no regex, no token echoed


def test_schema_errors_and_the_rest_are_reported_in_one_run():
    """A schema error does not hide the other errors — of other parts, nor of the same action
    (read-secret's channel and its approvals): fix them all after one run."""
    text = (
        BASE.replace("channel: C0PROD", "channel: prod-deploys")
        .replace("grant_command:", "grant_comand:", 1)
        .replace(
            "approvers: [U0LEAD1, U0ALICE]",
            'channel: "#ops"\n    approvers: [U0LEAD1, U0ALICE]\n    approvals_required: 3',
        )
        .replace("actions: [read-secret]", "actions: [read-secret, rotate-keys]")
        .replace("alice: U0ALICE", "alice: U0ALICE\n  bob: bob")
    )
    errs = errors_of(text)
    assert errs == [
        f"p.yaml:{line_of(text, 'bob: bob')}: people.bob: must be a Slack user ID such as U0123ABCD, "
        "not a name (a profile's ⋮ menu → Copy member ID)",
        f"p.yaml:{line_of(text, 'prod-deploys')}: actions.deploy-prod.channel: must be a Slack channel ID such as "
        "C0123ABCD, not a channel name (Slack shows it at the bottom of the channel's details)",
        f"p.yaml:{line_of(text, '#ops')}: actions.read-secret.channel: must be a Slack channel ID such as "
        "C0123ABCD, not a channel name (Slack shows it at the bottom of the channel's details)",
        f"p.yaml:{line_of(text, 'grant:')}: actions.deploy-prod.grant.grant_command: Field required",
        f"p.yaml:{line_of(text, 'grant_comand')}: actions.deploy-prod.grant.grant_comand: unknown key",
        f"p.yaml:{line_of(text, 'approvals_required: 3')}: actions.read-secret.approvals_required: "
        "needs 3 distinct approvers but only 2 can ever approve",
        f"p.yaml:{line_of(text, 'rotate-keys')}: pipelines.other-ci.actions.1: unknown action 'rotate-keys'",
    ]


def test_policy_check_reports_schema_and_other_errors_together(tmp_path, capsys):
    text = BASE.replace("channel: C0PROD", "channel: prod-deploys").replace("type: token", "type: carrier-pigeon")
    path = write(tmp_path, text)
    assert jit_cli(["policy", "check", str(path)]) == 1
    captured = capsys.readouterr()
    assert [line.split(": ")[1] for line in captured.out.splitlines()] == [
        "actions.deploy-prod.channel",
        "actions.read-secret.grant.type",
    ]
    assert captured.err.strip() == f"2 error(s) in {path}"


def test_the_grant_types_offered_leave_out_the_benchmarks_instrument():
    (err,) = errors_of(BASE.replace("type: token", "type: carrier-pigeon"))
    assert err.endswith("unknown grant type 'carrier-pigeon' (known: exec, postgres, redis_acl, token, webhook)")
    # still accepted where it is used on purpose (bench/)
    record = BASE.replace("type: token\n      audience: secrets-api", "type: record\n      key: bench:times")
    assert parse_policy(record).grants["read-secret"][0] == "record"


# ------------------------------------------------------------------ the new sections


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            'windows: ["mon-fri 09:00-18:00 Europe/Paris"]',
            'windows: ["mon-fri 09:00-18:00 Paris/Texas"]',
            "actions.change-db.windows.0: unknown time zone 'Paris/Texas'",
        ),
        (
            'windows: ["mon-fri 09:00-18:00 Europe/Paris"]',
            'windows: ["someday 09:00-18:00"]',
            "actions.change-db.windows.0: unknown day 'someday'",
        ),
        (
            'auto_approve: {environment: [staging, dev], ref: "refs/heads/main", max_ttl: 30m, max_per_day: 2}',
            "auto_approve: {max_ttl: 30m}",
            "actions.deploy-staging.auto_approve: auto_approve needs at least one condition",
        ),
        (
            "max_ttl: 30m, max_per_day: 2}",
            "max_ttl: 2h, max_per_day: 2}",
            "actions.deploy-staging.auto_approve.max_ttl: is longer than the action's ttl.max",
        ),
        (
            "max_per_day: 2}",
            "max_per_day: 0}",
            "actions.deploy-staging.auto_approve.max_per_day: Input should be greater than or equal to 1",
        ),
        ("  security_channel: C0SECURITY\n", "", "break_glass.security_channel: Field required"),
        (
            "approvers: [U0ONCALL, S0SECURITY]",
            "approvers: []",
            "break_glass.approvers: List should have at least 1 item",
        ),
        (
            "approvers: [U0ONCALL, S0SECURITY]",
            "approvers: [U0ONCALL, U0ONCALL]",
            "break_glass.approvers: an approver is listed twice",
        ),
        (
            "      staging: [U0DEV1]\n",
            "      staging: []\n",
            "actions.deploy-env.approvers_by_environment.staging: the approver list is empty",
        ),
        (
            "      prod: [U0LEAD1, U0LEAD2]\n",
            "      prod!: [U0LEAD1, U0LEAD2]\n",
            "actions.deploy-env.approvers_by_environment.prod!",
        ),
    ],
    ids=[
        "timezone",
        "day",
        "no-condition",
        "max-ttl",
        "max-per-day",
        "security-channel",
        "no-break-glass-approvers",
        "break-glass-twice",
        "empty-environment",
        "bad-environment-name",
    ],
)
def test_errors_in_the_new_sections(old, new, expected):
    text = rules_policy_text("/tmp")
    assert old in text
    errs = errors_of(text.replace(old, new, 1))
    assert any(expected in e for e in errs), errs


def test_an_action_needs_approvers_somewhere():
    text = BASE.replace("    approvers: [U0LEAD1, U0ALICE]\n", "")
    errs = errors_of(text)
    assert errs == [
        f"p.yaml:{line_of(text, '  read-secret:')}: actions.read-secret: "
        "no approvers: set approvers or approvers_by_environment"
    ]


def test_auto_approval_environments_must_have_approvers_when_approvers_go_by_environment():
    text = rules_policy_text("/tmp").replace(
        "      staging: [U0DEV1]\n    ttl: {default: 15m, max: 1h}\n",
        "      staging: [U0DEV1]\n    auto_approve: {environment: [staging, qa]}\n    ttl: {default: 15m, max: 1h}\n",
    )
    errs = errors_of(text)
    assert (
        len(errs) == 1 and "actions.deploy-env.auto_approve.environment.1: environment 'qa' has no approvers" in errs[0]
    )
    assert "approvers_by_environment has: prod, staging" in errs[0]


def test_break_glass_can_be_turned_off_per_action():
    text = rules_policy_text("/tmp").replace(
        "    description: Change the production database\n",
        "    description: Change the production database\n    break_glass: false\n",
    )
    p = parse_policy(text)
    assert p.break_glass_for("change-db") is None and p.break_glass_for("deploy-env") is not None
    own = text.replace(
        "    break_glass: false\n",
        "    break_glass: {approvers: [U0DBA], security_channel: C0DBSEC}\n",
    )
    bg = parse_policy(own).break_glass_for("change-db")
    assert bg.approvers == ["U0DBA"] and bg.max_ttl.total_seconds() == 1800  # the default


# ------------------------------------------------------------------ jit policy check


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "jit-policy.yaml"
    p.write_text(text)
    return p


def test_policy_check_ok(tmp_path, capsys):
    path = write(tmp_path, rules_policy_text("/tmp"))
    assert jit_cli(["policy", "check", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"{path}: ok — 6 action(s), 2 pipeline(s), sha256 ")
    assert load_policy(path).sha256 in out


def test_policy_check_lists_every_error_and_exits_1(tmp_path, capsys):
    text = BASE.replace("type: token", "type: carrier-pigeon").replace(
        "approvers: [U0LEAD1, U0ALICE]", "approvers: [U0LEAD1, U0ALICE, U0LEAD1]"
    )
    path = write(tmp_path, text)
    assert jit_cli(["policy", "check", str(path)]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 2 and all(line.startswith(f"{path}:") for line in lines)
    assert any("approvers: an approver is listed twice" in line for line in lines)
    assert any("unknown grant type 'carrier-pigeon'" in line for line in lines)
    assert captured.err.strip() == f"2 error(s) in {path}"


def test_policy_check_on_broken_yaml_and_a_missing_file(tmp_path, capsys):
    path = write(tmp_path, "actions:\n  a: [unclosed\n")
    assert jit_cli(["policy", "check", str(path)]) == 1
    assert "not valid YAML" in capsys.readouterr().out
    missing = tmp_path / "nope.yaml"
    assert jit_cli(["policy", "check", str(missing)]) == 1
    assert capsys.readouterr().out == f"{missing}: policy file not found\n"  # the file named, not a setting


def test_policy_check_without_a_file_says_how_to_name_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("JIT_POLICY_FILE", raising=False)
    assert jit_cli(["policy", "check"]) == 1
    assert capsys.readouterr().out == "jit-policy.yaml: policy file not found (name one: jit policy check FILE)\n"


def test_policy_check_as_a_command(tmp_path):
    bad = write(tmp_path, BASE.replace("type: token", "type: carrier-pigeon"))
    p = subprocess.run(
        [sys.executable, "-m", "bot.cli", "policy", "check", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert p.returncode == 1 and "carrier-pigeon" in p.stdout and "Traceback" not in p.stderr


# ------------------------------------------------------------------ YAML a policy never needs


def alias_bomb() -> str:
    """The 'billion laughs' in YAML: under 500 bytes, 9**9 values once its aliases expand."""
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\nactions: {}\n"


def test_an_alias_bomb_is_refused_before_anything_expands_it():
    text = alias_bomb()
    assert len(text) < 500
    assert errors_of(text) == ["p.yaml:1: YAML anchors and aliases are not allowed in a policy"]


@pytest.mark.parametrize(
    "yaml_text",
    [
        # a merge key: the one everyday use of aliases
        "defaults: &d {channel: C0APPROVALS}\nactions:\n  a:\n    <<: *d\n",
        # an anchor nobody refers to
        "defaults:\n  channel: &c C0APPROVALS\nactions: {}\n",
    ],
    ids=["merge-key", "unused-anchor"],
)
def test_any_anchor_or_alias_is_refused(yaml_text):
    line = 1 if yaml_text.startswith("defaults: &") else 2
    expected = f"p.yaml:{line}: YAML anchors and aliases are not allowed in a policy"
    assert errors_of(yaml_text) == [expected]


def test_the_bomb_is_refused_by_policy_check_at_load_and_on_reload(tmp_path, capsys):
    path = write(tmp_path, alias_bomb())
    assert jit_cli(["policy", "check", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == [f"{path}:1: YAML anchors and aliases are not allowed in a policy"]
    with pytest.raises(PolicyError) as e:
        load_policy(path)
    assert e.value.errors == out


def test_deep_nesting_is_refused_not_a_crash():
    text = BASE + "  deep:\n    grant: {type: exec, x: " + "[" * 5000 + "]" * 5000 + "}\n"
    errs = errors_of(text)
    assert len(errs) == 1 and errs[0].startswith(f"p.yaml:{line_of(text, '  deep:') + 1}: ")
    assert errs[0].endswith("values nested deeper than 32 levels are not allowed in a policy")


def test_too_many_values_are_refused():
    many = "auditors: [" + "U0X, " * 200_000 + "U0X]"
    text = BASE.replace("auditors: [S0SECURITY, U0AUDITOR2]", many)
    errs = errors_of(text)
    assert len(errs) == 1 and errs[0].startswith(f"p.yaml:{line_of(text, 'auditors:')}: ")
    assert errs[0].endswith("a policy has at most 100000 values")


def test_a_file_over_a_mebibyte_is_refused(tmp_path, capsys):
    path = write(tmp_path, BASE + "#" * (1024 * 1024) + "\n")
    assert jit_cli(["policy", "check", str(path)]) == 1
    assert capsys.readouterr().out == f"{path}:1: the policy file is larger than 1024 KiB\n"


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        (
            "actions: !!python/object/apply:os.system ['true']\n",
            "p.yaml:1: not valid YAML: could not determine a constructor",
        ),
        ("? [a, b]\n: 1\nactions: {}\n", "p.yaml:1: not valid YAML: found unhashable key"),
        (
            "actions: {}\nauditors: [" + "1" * 5000 + "]\n",
            "p.yaml:2: not valid YAML: Exceeds the limit",
        ),
        ("actions: {}\n---\nactions: {}\n", "p.yaml:2: not valid YAML: but found another document"),
    ],
    ids=["python-tag", "list-as-key", "huge-integer", "two-documents"],
)
def test_other_yaml_oddities_are_errors_with_a_line_not_crashes(yaml_text, expected):
    errs = errors_of(yaml_text)
    assert len(errs) == 1 and errs[0].startswith(expected), errs


def test_a_file_that_is_not_utf8(tmp_path, capsys):
    path = tmp_path / "jit-policy.yaml"
    path.write_bytes(BASE.encode() + b"# caf\xe9\n")
    assert jit_cli(["policy", "check", str(path)]) == 1
    line = BASE.count("\n") + 1
    assert capsys.readouterr().out == f"{path}:{line}: the policy is not UTF-8 text\n"
