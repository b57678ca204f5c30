"""GitLab's REST API (v4) for deployment approvals, on a local server.

- `GET /api/v4/version`: the instance's version (an `-ee` suffix: Premium features exist).
- `GET /api/v4/projects/:id`: the project (its `path_with_namespace`).
- `GET /api/v4/projects/:id/deployments/:deployment_id`: the deployment (`status: blocked` while
  it waits for approvals, its job as `deployable` with its pipeline).
- `POST /api/v4/projects/:id/deployments/:deployment_id/approval`: approve or reject
  (`status: approved|rejected`, `comment`) as the token's user; recorded; faults can be injected.

Requests authenticate with `PRIVATE-TOKEN: <token>` or `Authorization: Bearer <token>`; anything
else is a 401.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .payloads import VERSION, deployment_event, project


@dataclass
class Approval:
    project_id: int
    deployment_id: int
    body: dict[str, Any]
    status: int
    at: float = field(default_factory=time.time)


class GitLabFake:
    def __init__(self, token: str = "glpat-jit-approver-0123456789", version: str = VERSION) -> None:
        self.token = token
        self.version = version
        self.deployments: dict[tuple[int, int], dict[str, Any]] = {}
        self.projects: dict[int, str] = {}  # id → path_with_namespace
        self.approvals: list[Approval] = []
        self._fail: list[int] = []
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> GitLabFake:
        fake = self

        class Handler(_Handler):
            owner = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> GitLabFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ------------------------------------------------------------------ test helpers

    def blocked_deployment(
        self,
        *,
        project_path: str,
        project_id: int,
        deployment_id: int,
        job_id: int,
        pipeline_id: int,
        environment: str,
        sha: str,
        username: str = "alice",
    ) -> dict[str, Any]:
        """A deployment job waits for approval: registered here, and its webhook payload returned."""
        with self._lock:
            self.projects[project_id] = project_path
            self.deployments[(project_id, deployment_id)] = {
                "id": deployment_id,
                "iid": 7,
                "ref": "main",
                "sha": sha,
                "created_at": "2024-05-02T10:14:01.000Z",
                "updated_at": "2024-05-02T10:14:01.000Z",
                "status": "blocked",
                "user": {"id": 184239, "name": username.title(), "username": username, "state": "active"},
                "environment": {"id": 9, "name": environment, "external_url": None},
                "deployable": {
                    "id": job_id,
                    "status": "manual",
                    "stage": "deploy",
                    "name": "deploy",
                    "ref": "main",
                    "tag": False,
                    "pipeline": {"id": pipeline_id, "sha": sha, "ref": "main", "status": "blocked"},
                },
                "pending_approval_count": 1,
                "approvals": [],
            }
        return deployment_event(
            base=self.url,
            status="blocked",
            project_path=project_path,
            project_id=project_id,
            deployment_id=deployment_id,
            job_id=job_id,
            environment=environment,
            sha=sha,
            username=username,
        )

    def cancel(self, project_id: int, deployment_id: int) -> None:
        """Someone cancels the deployment's pipeline on GitLab: the deployment reads `canceled`."""
        with self._lock:
            self.deployments[(project_id, deployment_id)]["status"] = "canceled"

    def fail_approvals(self, *statuses: int) -> None:
        with self._lock:
            self._fail.extend(statuses)

    def decided(self, deployment_id: int) -> list[Approval]:
        with self._lock:
            return [a for a in self.approvals if a.deployment_id == deployment_id and a.status < 300]

    # ------------------------------------------------------------------ the API

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        bearer = headers.get("authorization", "").partition(" ")[2]
        if headers.get("private-token", bearer) != self.token:
            return 401, {"message": "401 Unauthorized"}
        if method == "GET" and path == "/api/v4/version":
            return 200, {
                "version": self.version,
                "revision": "2c4a3f1e",
                "kas": {"enabled": False},
                "enterprise": self.version.endswith("-ee"),
            }
        m = re.fullmatch(r"/api/v4/projects/(\d+)", path)
        if method == "GET" and m:
            with self._lock:
                found = self.projects.get(int(m.group(1)))
            if found is None:
                return 404, {"message": "404 Project Not Found"}
            return 200, project(found, int(m.group(1)), self.url)
        m = re.fullmatch(r"/api/v4/projects/(\d+)/deployments/(\d+)(/approval)?", path)
        if not m:
            return 404, {"error": "404 Not Found"}
        key = (int(m.group(1)), int(m.group(2)))
        if m.group(3) and not self.version.endswith("-ee"):
            return 404, {"error": "404 Not Found"}  # the Community Edition has no such route
        with self._lock:
            dep = self.deployments.get(key)
        if dep is None:
            return 404, {"message": "404 Deployment Not Found"}
        if method == "GET" and not m.group(3):
            return 200, dep
        if method == "POST" and m.group(3):
            try:
                data = json.loads(body or b"{}")
            except ValueError:
                return 400, {"error": "body is not JSON"}
            with self._lock:
                status = self._fail.pop(0) if self._fail else None
                if status is None:
                    if data.get("status") not in ("approved", "rejected"):
                        status = 400
                    elif dep["status"] != "blocked":
                        status = 400
                    else:
                        status = 201
                        dep["status"] = "created" if data["status"] == "approved" else "canceled"
                        dep["pending_approval_count"] = 0
                self.approvals.append(Approval(key[0], key[1], data, status))
            if status == 201:
                return 201, {
                    "user": {"id": 99, "username": "jit-bot", "name": "jit"},
                    "status": data["status"],
                    "created_at": "2024-05-02T10:15:00.000Z",
                    "comment": data.get("comment"),
                }
            return status, {"message": "400 Bad request" if status == 400 else "500 Internal Server Error"}
        return 405, {"error": "405 Method Not Allowed"}


class _Handler(BaseHTTPRequestHandler):
    owner: GitLabFake
    protocol_version = "HTTP/1.1"

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, data = self.owner.handle(method, self.path.split("?")[0], headers, body)
        raw = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:  # noqa: N802
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def log_message(self, *args: Any) -> None:
        pass
