"""What GitLab POSTs to a project webhook for a deployment, per GitLab's "Webhook events" reference.

A deployment event (`X-Gitlab-Event: Deployment Hook`, `object_kind: deployment`) is sent when a
deployment is created (`blocked` while it waits for approval), starts, succeeds, fails or is
canceled. GitLab does not sign webhooks: it sends the secret token configured on the hook in
`X-Gitlab-Token`, and a UUID per event in `X-Gitlab-Event-UUID`.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

VERSION = "17.5.1-ee"


def project(path: str, project_id: int, base: str) -> dict[str, Any]:
    namespace, _, name = path.rpartition("/")
    return {
        "id": project_id,
        "name": name,
        "description": "",
        "web_url": f"{base}/{path}",
        "avatar_url": None,
        "git_ssh_url": f"git@gitlab.example.com:{path}.git",
        "git_http_url": f"{base}/{path}.git",
        "namespace": namespace,
        "visibility_level": 0,
        "path_with_namespace": path,
        "default_branch": "main",
        "ci_config_path": "",
        "homepage": f"{base}/{path}",
        "url": f"git@gitlab.example.com:{path}.git",
        "ssh_url": f"git@gitlab.example.com:{path}.git",
        "http_url": f"{base}/{path}.git",
    }


def user(username: str, user_id: int, base: str) -> dict[str, Any]:
    return {
        "id": user_id,
        "name": username.title(),
        "username": username,
        "avatar_url": f"https://www.gravatar.com/avatar/{user_id}?s=80&d=identicon",
        "email": "[REDACTED]",
    }


def deployment_event(
    *,
    base: str,
    status: str,
    project_path: str,
    project_id: int,
    deployment_id: int,
    job_id: int,
    environment: str,
    sha: str,
    ref: str = "main",
    username: str = "alice",
    user_id: int = 184239,
) -> dict[str, Any]:
    """A deployment event as the webhook carries it."""
    return {
        "object_kind": "deployment",
        "status": status,
        "status_changed_at": "2024-05-02 10:14:01 +0000",
        "deployment_id": deployment_id,
        "deployable_id": job_id,
        "deployable_url": f"{base}/{project_path}/-/jobs/{job_id}",
        "environment": environment,
        "environment_tier": "production" if environment == "production" else "other",
        "environment_slug": environment.lower(),
        "environment_external_url": None,
        "project": project(project_path, project_id, base),
        "short_sha": sha[:8],
        "user": user(username, user_id, base),
        "user_url": f"{base}/{username}",
        "commit_url": f"{base}/{project_path}/-/commit/{sha}",
        "commit_title": "Release 4.2",
        "ref": ref,
    }


def delivery(token: str, payload: dict[str, Any], *, event_uuid: str | None = None) -> tuple[bytes, dict[str, str]]:
    """The bytes and headers of one webhook request, as GitLab sends it."""
    body = json.dumps(payload).encode()
    return body, {
        "Content-Type": "application/json",
        "User-Agent": f"GitLab/{VERSION}",
        "X-Gitlab-Event": "Deployment Hook",
        "X-Gitlab-Token": token,
        "X-Gitlab-Event-UUID": event_uuid or str(uuid.uuid4()),
        "X-Gitlab-Webhook-UUID": "9b5ee4a0-e2a6-4d8e-8d04-5e3ad0c2e0b1",
        "X-Gitlab-Instance": "https://gitlab.example.com",
    }
