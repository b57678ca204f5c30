"""What GitHub POSTs to a GitHub App's webhook URL: the documented payloads and their signed delivery.

Built from GitHub's webhook reference ("Webhook events and payloads": `deployment_protection_rule`,
`workflow_run`, `ping`) and "Validating webhook deliveries": the body is JSON, signed with
HMAC-SHA256 of the raw bytes under the webhook secret, sent as `X-Hub-Signature-256: sha256=<hex>`,
with `X-GitHub-Event`, a fresh GUID in `X-GitHub-Delivery` and the hook's ids.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from typing import Any

#: The hook that delivers to a GitHub App (its id and the app's, as GitHub names them).
HOOK_ID = "447638302"


def user(login: str, user_id: int, kind: str = "User") -> dict[str, Any]:
    """A `simple-user` object as webhooks carry it (sender, creator, actor)."""
    return {
        "login": login,
        "id": user_id,
        "node_id": f"MDQ6VXNlcj{user_id}",
        "avatar_url": f"https://avatars.githubusercontent.com/u/{user_id}?v=4",
        "gravatar_id": "",
        "url": f"https://api.github.com/users/{login}",
        "html_url": f"https://github.com/{login}",
        "type": kind,
        "site_admin": False,
    }


def repository(full_name: str, repo_id: int, api: str = "https://api.github.com") -> dict[str, Any]:
    owner, _, name = full_name.partition("/")
    return {
        "id": repo_id,
        "node_id": f"R_kgDOH{repo_id}",
        "name": name,
        "full_name": full_name,
        "private": True,
        "owner": user(owner, 9919, "Organization"),
        "html_url": f"https://github.com/{full_name}",
        "description": None,
        "fork": False,
        "url": f"{api}/repos/{full_name}",
        "deployments_url": f"{api}/repos/{full_name}/deployments",
        "default_branch": "main",
        "visibility": "private",
    }


def deployment_protection_rule(
    *,
    api: str,
    full_name: str,
    repo_id: int,
    installation_id: int,
    run_id: int,
    environment: str,
    deployment_id: int,
    sha: str,
    ref: str = "main",
    sender: str = "octocat",
    sender_id: int = 583231,
    event: str = "push",
) -> dict[str, Any]:
    """`deployment_protection_rule` with `action: requested`: a job deploying to `environment`
    waits for this app's rule; the app answers at `deployment_callback_url`."""
    repo_url = f"{api}/repos/{full_name}"
    creator = user(sender, sender_id)
    return {
        "action": "requested",
        "environment": environment,
        "event": event,
        "sha": sha,
        "ref": ref,
        "deployment_callback_url": f"{repo_url}/actions/runs/{run_id}/deployment_protection_rule",
        "deployment": {
            "url": f"{repo_url}/deployments/{deployment_id}",
            "id": deployment_id,
            "node_id": f"DE_kwDOH{deployment_id}",
            "task": "deploy",
            "original_environment": environment,
            "environment": environment,
            "description": None,
            "created_at": "2024-05-02T10:14:01Z",
            "updated_at": "2024-05-02T10:14:01Z",
            "statuses_url": f"{repo_url}/deployments/{deployment_id}/statuses",
            "repository_url": repo_url,
            "creator": creator,
            "sha": sha,
            "ref": ref,
            "payload": {},
            "transient_environment": False,
            "production_environment": environment == "production",
            "performed_via_github_app": None,
        },
        "pull_requests": [],
        "repository": repository(full_name, repo_id, api),
        "organization": {"login": full_name.partition("/")[0], "id": 9919, "node_id": "O_kgDOA9919"},
        "installation": {"id": installation_id, "node_id": f"MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9u{installation_id}"},
        "sender": creator,
    }


def workflow_run(
    *,
    api: str,
    full_name: str,
    repo_id: int,
    installation_id: int,
    run_id: int,
    run_attempt: int = 1,
    sha: str,
    action: str = "completed",
    status: str = "completed",
    conclusion: str | None = "cancelled",
    sender: str = "octocat",
) -> dict[str, Any]:
    """`workflow_run` (here: a run that completed, by default because it was cancelled)."""
    return {
        "action": action,
        "workflow_run": run_object(
            api=api,
            full_name=full_name,
            repo_id=repo_id,
            run_id=run_id,
            run_attempt=run_attempt,
            sha=sha,
            status=status,
            conclusion=conclusion,
            actor=sender,
        ),
        "workflow": {"id": 161335, "name": "deploy", "path": ".github/workflows/deploy.yml", "state": "active"},
        "repository": repository(full_name, repo_id, api),
        "organization": {"login": full_name.partition("/")[0], "id": 9919},
        "installation": {"id": installation_id, "node_id": "MDIzOkludGVncmF0aW9uSW5zdGFsbGF0aW9u"},
        "sender": user(sender, 583231),
    }


def run_object(
    *,
    api: str,
    full_name: str,
    repo_id: int,
    run_id: int,
    run_attempt: int,
    sha: str,
    status: str = "waiting",
    conclusion: str | None = None,
    actor: str = "octocat",
    ref: str = "main",
) -> dict[str, Any]:
    """A workflow run as `GET /repos/{owner}/{repo}/actions/runs/{run_id}` returns it."""
    return {
        "id": run_id,
        "name": "deploy",
        "node_id": f"WFR_kwLOH{run_id}",
        "head_branch": ref,
        "head_sha": sha,
        "path": ".github/workflows/deploy.yml",
        "display_title": "Release 4.2",
        "run_number": 42,
        "event": "push",
        "status": status,
        "conclusion": conclusion,
        "workflow_id": 161335,
        "url": f"{api}/repos/{full_name}/actions/runs/{run_id}",
        "html_url": f"https://github.com/{full_name}/actions/runs/{run_id}",
        "run_attempt": run_attempt,
        "run_started_at": "2024-05-02T10:13:40Z",
        "actor": user(actor, 583231),
        "triggering_actor": user(actor, 583231),
        "repository": {"id": repo_id, "full_name": full_name},
    }


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def delivery(
    secret: str, event: str, payload: dict[str, Any], *, app_id: str, guid: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """The bytes and headers of one delivery, signed as GitHub signs it."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/8d7b3a1",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": guid or str(uuid.uuid4()),
        "X-GitHub-Hook-ID": HOOK_ID,
        "X-GitHub-Hook-Installation-Target-Type": "integration",
        "X-GitHub-Hook-Installation-Target-ID": app_id,
        "X-Hub-Signature-256": sign(secret, body),
    }
    return body, headers
