"""The sandbox stays apart: only `jit dev` knows it, it knows nothing of jit, and it agrees with the starter policy."""

from __future__ import annotations

import re

import yaml
from test_architecture import ROOT, imports, modules

from bot.sandbox.workspace import starter_workspace


def test_only_jit_dev_starts_the_sandbox_and_the_sandbox_imports_nothing_of_jit():
    found = []
    for name, path in modules().items():
        for imported, _, line in imports(path):
            inside = name.startswith("bot.sandbox")
            if imported.startswith("bot.sandbox") and not inside and name != "bot.dev":
                found.append(f"{name}:{line} imports {imported}: only bot/dev.py may")
            if (
                inside
                and imported.split(".")[0] in ("bot", "workers", "tests")
                and not imported.startswith("bot.sandbox")
            ):
                found.append(f"{name}:{line} imports {imported}: the sandbox is a Slack, not a part of jit")
    assert not found, "\n".join(found)


def test_nothing_else_in_jit_knows_the_sandbox_exists():
    """jit talks to it through SLACK_API_URL as to Slack: no special case anywhere in the product."""
    allowed = {ROOT / "bot" / "dev.py", ROOT / "bot" / "cli.py"}  # starts it; its --no-sandbox flag
    mentions = [
        str(path.relative_to(ROOT))
        for folder in ("bot", "workers", "client")
        for path in (ROOT / folder).rglob("*.py")
        if "sandbox" not in path.relative_to(ROOT).parts
        and path not in allowed
        and re.search("sandbox", path.read_text(encoding="utf-8"), re.IGNORECASE)
    ]
    assert mentions == []


def test_the_starter_policy_names_the_sandboxs_people_group_and_channel():
    text = (ROOT / "bot" / "example-policy.yaml").read_text(encoding="utf-8")
    policy = yaml.safe_load(text)
    workspace = starter_workspace()
    people = {p.id for p in workspace.people}
    ids = set(re.findall(r"\b[UWSC][0-9A-Z]{2,}\b", yaml.safe_dump(policy)))
    assert ids, "the starter policy names Slack ids"
    unknown = {i for i in ids if i not in people | set(workspace.groups) | set(workspace.channels)}
    assert unknown == set()
    # and the roles the page shows are the policy's: alice directly, bob through the group, carol
    # asks (and is in the group, so self-approval is what stops her), dave may not approve
    action = policy["actions"]["read-secret"]
    assert action["approvals_required"] == 2
    assert set(action["approvers"]) == {"U0ALICE", "S0LEADS"}
    assert set(workspace.groups["S0LEADS"]) == {"U0BOB", "U0CAROL"}
    assert policy["people"] == {"carol@example.com": "U0CAROL"}
    assert workspace.person("U0CAROL").email == "carol@example.com"
    approvers = {"U0ALICE", *workspace.groups["S0LEADS"]}
    assert "U0DAVE" not in approvers and "U0DAVE" in people
