"""jit as a GitLab approver: the deployment a webhook names, and its approval or rejection (GitLab
Premium/Ultimate, 14.7+: `POST /projects/:id/deployments/:deployment_id/approval`)."""

from __future__ import annotations

import hmac
import re
from typing import Any

import requests

from bot.platforms.http import ApiError, call

#: The first GitLab version with the deployment approval API (Premium and Ultimate only).
APPROVALS_SINCE = (14, 7)


def token_ok(secret: str, header: str | None) -> bool:
    """`X-Gitlab-Token` is the hook's secret token, sent as is; compared in constant time."""
    if not header:
        return False
    return hmac.compare_digest(secret.encode(), header.encode("utf-8", "replace"))


class GitLabApi:
    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_url = f"{self.base_url}/api/v4"
        self.token = token
        self.session = requests.Session()

    @classmethod
    def from_settings(cls, settings: Any) -> GitLabApi | None:
        if not settings.gitlab_url or settings.gitlab_api_token is None:
            return None
        return cls(settings.gitlab_url, settings.gitlab_api_token.get_secret_value())

    def _headers(self) -> dict[str, str]:
        return {"PRIVATE-TOKEN": self.token, "Accept": "application/json", "User-Agent": "jit-bot"}

    def deployment(self, project_id: int, deployment_id: int) -> dict[str, Any]:
        """`GET /projects/:id/deployments/:deployment_id`."""
        data = call(
            self.session,
            "GET",
            f"{self.api_url}/projects/{int(project_id)}/deployments/{int(deployment_id)}",
            headers=self._headers(),
            timeout=(3.05, 5.0),
        )
        if not isinstance(data, dict):
            raise ApiError(502, "the deployment is not a JSON object")
        return data

    def project(self, project_id: int) -> dict[str, Any]:
        """`GET /projects/:id` (its `path_with_namespace`: the webhook's own word is not taken)."""
        data = call(
            self.session,
            "GET",
            f"{self.api_url}/projects/{int(project_id)}",
            headers=self._headers(),
            timeout=(3.05, 5.0),
        )
        if not isinstance(data, dict):
            raise ApiError(502, "the project is not a JSON object")
        return data

    def decide(self, project_id: int, deployment_id: int, state: str, comment: str) -> None:
        """Approve or reject a blocked deployment as the token's user (who must be allowed to
        approve deployments to its protected environment)."""
        call(
            self.session,
            "POST",
            f"{self.api_url}/projects/{int(project_id)}/deployments/{int(deployment_id)}/approval",
            headers=self._headers(),
            body={"status": state, "comment": comment},
        )

    def version(self) -> str:
        data = call(self.session, "GET", f"{self.api_url}/version", headers=self._headers(), timeout=(3.05, 5.0))
        return str((data or {}).get("version") or "") if isinstance(data, dict) else ""


def approvals_api_missing(version: str) -> str | None:
    """Why an instance of this version has no deployment approval API, or None when it has one.
    `-ee` marks the Enterprise Edition (the API also needs a Premium or Ultimate licence, which
    only an administrator can read)."""
    m = re.match(r"(\d+)\.(\d+)", version or "")
    if m is None:
        return f"GitLab reports version {version!r}, which jit cannot read"
    if (int(m.group(1)), int(m.group(2))) < APPROVALS_SINCE:
        return f"GitLab {version} is older than 14.7, the first with deployment approvals"
    if not version.endswith("-ee"):
        return f"GitLab {version} is the Community Edition; deployment approvals need Premium or Ultimate"
    return None
