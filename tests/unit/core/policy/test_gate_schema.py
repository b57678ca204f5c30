"""The policy's deployment gates (`github:` / `gitlab:` on a pipeline): each mistake is named with its line."""

from __future__ import annotations

import pytest

from bot.core.errors import PolicyError
from bot.wiring import parse_policy

POLICY = """\
defaults:
  channel: C0APPROVALS
pipelines:
  web-production:
    github: {repository: acme/web, environment: production}
    oidc:
      issuer: https://token.actions.githubusercontent.com
      audience: jit-bot
      claims: {repository: acme/web}
    actions: [deploy]
  infra:
    gitlab: {project: acme/platform/infra, environment: Production, action: apply}
    oidc:
      issuer: https://gitlab.example.com
      audience: jit-bot
      claims: {project_path: acme/platform/infra}
    actions: [apply, deploy]
actions:
  deploy:
    approvers: [U0LEAD1]
    grant: {type: token, audience: web}
  apply:
    approvers: [U0LEAD1]
    grant: {type: token, audience: infra}
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(PolicyError) as e:
        parse_policy(text, source="p.yaml")
    return e.value.errors


def line_of(text: str, needle: str) -> int:
    return next(i + 1 for i, line in enumerate(text.splitlines()) if needle in line)


def test_a_gated_pipeline_is_found_by_platform_place_and_environment_whatever_their_case():
    p = parse_policy(POLICY)
    assert p.gated_pipeline("github", "Acme/Web", "PRODUCTION") == "web-production"
    assert p.gated_pipeline("gitlab", "acme/platform/infra", "production") == "infra"
    assert p.gated_pipeline("github", "acme/web", "staging") is None
    assert p.gated_pipeline("gitlab", "acme/web", "production") is None
    assert p.pipelines["web-production"].gate_action == "deploy"
    assert p.pipelines["infra"].gate_action == "apply"


@pytest.mark.parametrize(
    ("old", "new", "needle", "message"),
    [
        (
            "    oidc:\n      issuer: https://token.actions.githubusercontent.com\n      audience: jit-bot\n"
            "      claims: {repository: acme/web}\n",
            "    token_sha256: " + "a" * 64 + "\n",
            "github: {repository: acme/web",
            "a gated pipeline sets oidc, not token_sha256",
        ),
        (
            "    actions: [apply, deploy]",
            "    actions: [deploy]",
            "gitlab: {project",
            "action 'apply' is not in this pipeline's actions",
        ),
        (
            "{project: acme/platform/infra, environment: Production, action: apply}",
            "{project: acme/platform/infra, environment: Production}",
            "gitlab: {project",
            "set gitlab.action",
        ),
        (
            "    actions: [deploy]\n  infra:",
            "    gitlab: {project: acme/web, environment: production}\n    actions: [deploy]\n  infra:",
            "    gitlab: {project: acme/web",
            "not both",
        ),
        (
            "{repository: acme/web, environment: production}",
            "{repository: 'acme web', environment: production}",
            "github: {repository",
            "should match pattern",
        ),
        (
            "{project: acme/platform/infra, environment: Production, action: apply}",
            "{project: acme/platform/infra, environment: Production, action: apply, when: always}",
            "gitlab: {project",
            "pipelines.infra.gitlab.when: unknown key",
        ),
    ],
)
def test_gate_mistakes_are_named_with_their_line(old, new, needle, message):
    assert old in POLICY
    text = POLICY.replace(old, new, 1)
    errors = errors_of(text)
    assert any(message in e and e.startswith(f"p.yaml:{line_of(text, needle)}:") for e in errors), errors


def test_two_pipelines_may_not_gate_the_same_environment():
    twin = """  twin:
    github: {repository: ACME/web, environment: Production}
    oidc:
      issuer: https://token.actions.githubusercontent.com
      audience: jit-bot
      claims: {repository: acme/web}
    actions: [deploy]
actions:
"""
    text = POLICY.replace("actions:\n  deploy:\n", twin + "  deploy:\n", 1)
    errors = errors_of(text)
    assert errors == [
        f"p.yaml:{line_of(text, 'github: {repository: ACME/web')}: pipelines.twin.github: "
        "the same gate as pipeline 'web-production'"
    ]
