"""GitHub's REST API as a GitHub App uses it for deployment protection rules, on a local server.

- `POST /app/installations/{id}/access_tokens`: the app authenticates with a JWT, which is checked
  as GitHub checks it (RS256 signature under the app's key, `iss` = the app id, `iat` present and
  not in the future, `exp` after now and at most 10 minutes after `iat`); an installation the app
  does not have is a 404. Answers with an installation token that expires in one hour.
- `GET /repos/{owner}/{repo}/actions/runs/{run_id}`: the run, for installation tokens whose
  installation covers the repository (else 404, as GitHub hides what a token cannot see).
- `POST /repos/{owner}/{repo}/actions/runs/{run_id}/deployment_protection_rule`: the app approves
  or rejects (`environment_name`, `state`, `comment`); recorded. Faults can be injected.

Also test helpers: `deployment(...)` registers a run that waits on a protection rule and returns
the webhook payload GitHub would send for it; `job_token_endpoint(...)` plays the Actions runtime's
OIDC token endpoint (`ACTIONS_ID_TOKEN_REQUEST_URL`) for a job.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .payloads import deployment_protection_rule, run_object

#: GitHub refuses an app JWT whose lifetime is longer than this.
MAX_JWT_LIFETIME_S = 600
#: Installation tokens live one hour.
TOKEN_LIFETIME_S = 3600


@dataclass
class Callback:
    """One review of a protection rule, as received (including the failed attempts)."""

    run_id: int
    repository: str
    body: dict[str, Any]
    token: str
    status: int
    at: float = field(default_factory=time.time)


class GitHubFake:
    """The GitHub API of one GitHub App: its key pair, installations, runs and callbacks."""

    def __init__(self, app_id: str = "271828") -> None:
        self.app_id = app_id
        self.private_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.public_key = self.private_key.public_key()
        #: installation id → repositories (full names) it covers
        self.installations: dict[int, set[str]] = {}
        #: (full name, run id) → run object
        self.runs: dict[tuple[str, int], dict[str, Any]] = {}
        #: (full name, run id) → environments still waiting for this app's rule
        self.pending: dict[tuple[str, int], set[str]] = {}
        self.tokens: dict[str, tuple[int, float]] = {}  # token → (installation, expires)
        self.token_requests: list[dict[str, Any]] = []  # each exchange: the JWT's claims, or why refused
        self.callbacks: list[Callback] = []
        self.run_requests = 0
        self.job_tokens: dict[str, str] = {}  # ACTIONS_ID_TOKEN_REQUEST_TOKEN → the job's OIDC token
        self._fail: list[int] = []  # statuses to answer the next callbacks with
        self._fail_all: int | None = None  # answer every callback so, until cleared
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> GitHubFake:
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

    def __enter__(self) -> GitHubFake:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def api_url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def private_key_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )

    def write_private_key(self, path: Path) -> Path:
        """The app's private key as GitHub lets you download it (PKCS#1 PEM)."""
        path.write_bytes(self.private_key_pem())
        path.chmod(0o600)
        return path

    # ------------------------------------------------------------------ test helpers

    def install(self, installation_id: int, *repositories: str) -> None:
        with self._lock:
            self.installations.setdefault(installation_id, set()).update(repositories)

    def deployment(
        self,
        *,
        full_name: str,
        repo_id: int,
        installation_id: int,
        run_id: int,
        environment: str,
        sha: str,
        deployment_id: int,
        run_attempt: int = 1,
        sender: str = "octocat",
    ) -> dict[str, Any]:
        """A job of run `run_id` deploys to `environment` and waits for this app: the run is
        registered (`waiting`) and the webhook payload GitHub sends is returned."""
        with self._lock:
            self.runs[(full_name, run_id)] = run_object(
                api=self.api_url,
                full_name=full_name,
                repo_id=repo_id,
                run_id=run_id,
                run_attempt=run_attempt,
                sha=sha,
                actor=sender,
            )
            self.pending.setdefault((full_name, run_id), set()).add(environment)
        return deployment_protection_rule(
            api=self.api_url,
            full_name=full_name,
            repo_id=repo_id,
            installation_id=installation_id,
            run_id=run_id,
            environment=environment,
            deployment_id=deployment_id,
            sha=sha,
            sender=sender,
        )

    def job_token_endpoint(self, oidc_token: str) -> dict[str, str]:
        """The environment a job with `id-token: write` gets: where its step asks for its OIDC token
        (here: `oidc_token`, minted by the test's issuer), and with which bearer."""
        bearer = secrets.token_urlsafe(16)
        with self._lock:
            self.job_tokens[bearer] = oidc_token
        return {
            "ACTIONS_ID_TOKEN_REQUEST_URL": f"{self.api_url}/_actions/id-token?api-version=2.0",
            "ACTIONS_ID_TOKEN_REQUEST_TOKEN": bearer,
        }

    def fail_callbacks(self, *statuses: int) -> None:
        """Answer the next callbacks with these statuses (e.g. 502, 502), then normally."""
        with self._lock:
            self._fail.extend(statuses)

    def fail_all_callbacks(self, status: int) -> None:
        """Answer every callback with `status` until `clear_faults()`."""
        with self._lock:
            self._fail_all = status

    def clear_faults(self) -> None:
        with self._lock:
            self._fail, self._fail_all = [], None

    def reviews(self, run_id: int | None = None) -> list[Callback]:
        """Callbacks GitHub accepted (2xx), oldest first."""
        with self._lock:
            return [c for c in self.callbacks if c.status < 300 and (run_id is None or c.run_id == run_id)]

    def attempts(self, run_id: int) -> list[Callback]:
        with self._lock:
            return [c for c in self.callbacks if c.run_id == run_id]

    # ------------------------------------------------------------------ the API

    def _app_jwt(self, headers: dict[str, str]) -> tuple[dict[str, Any] | None, str]:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None, "no bearer token"
        try:
            claims = jwt.decode(
                token,
                self.public_key,
                algorithms=["RS256"],
                options={"require": ["iat", "exp", "iss"], "verify_iat": True},
                leeway=0,
            )
        except jwt.PyJWTError as e:
            return None, f"A JSON web token could not be decoded ({type(e).__name__})"
        if str(claims["iss"]) != self.app_id:
            return None, "'Issuer' claim ('iss') must be the app id"
        now = time.time()
        if claims["iat"] > now + 60:
            return None, "'Issued at' claim ('iat') must be an Integer representing a time in the past"
        if claims["exp"] - claims["iat"] > MAX_JWT_LIFETIME_S:
            return None, "'Expiration time' claim ('exp') is too far in the future"
        return claims, ""

    def _installation_of(self, headers: dict[str, str]) -> int | None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() not in ("bearer", "token"):
            return None
        with self._lock:
            found = self.tokens.get(token)
        if found is None or found[1] <= time.time():
            return None
        return found[0]

    def handle(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        if method == "GET" and path == "/_actions/id-token":
            bearer = headers.get("authorization", "").partition(" ")[2]
            with self._lock:
                token = self.job_tokens.get(bearer)
            return (200, {"value": token}) if token else (401, {"message": "Bad credentials"})
        m = re.fullmatch(r"/app/installations/(\d+)/access_tokens", path)
        if method == "POST" and m:
            claims, why = self._app_jwt(headers)
            with self._lock:
                self.token_requests.append({"claims": claims, "refused": why})
            if claims is None:
                return 401, {"message": why, "documentation_url": "https://docs.github.com/rest"}
            installation = int(m.group(1))
            if installation not in self.installations:
                return 404, {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}
            token = "ghs_" + secrets.token_urlsafe(27)[:36]
            expires = time.time() + TOKEN_LIFETIME_S
            with self._lock:
                self.tokens[token] = (installation, expires)
            return 201, {
                "token": token,
                "expires_at": datetime.fromtimestamp(int(expires), UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "permissions": {"actions": "read", "deployments": "write", "metadata": "read"},
                "repository_selection": "selected",
            }
        m = re.fullmatch(r"/repos/([^/]+/[^/]+)/actions/runs/(\d+)(/deployment_protection_rule)?", path)
        if m:
            full_name, run_id, review = m.group(1), int(m.group(2)), m.group(3)
            installation = self._installation_of(headers)
            if installation is None:
                return 401, {"message": "Bad credentials"}
            with self._lock:
                visible = full_name in self.installations.get(installation, set())
                run = self.runs.get((full_name, run_id)) if visible else None
            if run is None:
                return 404, {"message": "Not Found"}
            if method == "GET" and not review:
                with self._lock:
                    self.run_requests += 1
                return 200, run
            if method == "POST" and review:
                return self._review(full_name, run_id, headers, body)
        return 404, {"message": "Not Found"}

    def _review(self, full_name: str, run_id: int, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        token = headers.get("authorization", "").partition(" ")[2]
        try:
            data = json.loads(body or b"{}")
        except ValueError:
            return 400, {"message": "Problems parsing JSON"}
        with self._lock:
            status = self._fail.pop(0) if self._fail else self._fail_all
            if status is None:
                pending = self.pending.get((full_name, run_id), set())
                if data.get("state") not in ("approved", "rejected") or not data.get("environment_name"):
                    status = 422
                elif data["environment_name"] not in pending:
                    status = 422
                else:
                    pending.discard(data["environment_name"])
                    status = 204
            self.callbacks.append(Callback(run_id, full_name, data, token, status))
        if status == 204:
            return 204, None
        return status, {"message": "Validation Failed" if status == 422 else "Server Error"}


class _Handler(BaseHTTPRequestHandler):
    owner: GitHubFake
    protocol_version = "HTTP/1.1"

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, data = self.owner.handle(method, self.path.split("?")[0], headers, body)
        raw = b"" if data is None else json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(raw)))
        self.send_header("X-GitHub-Media-Type", "github.v3; format=json")
        self.end_headers()
        self.wfile.write(raw)

    def do_GET(self) -> None:  # noqa: N802
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def log_message(self, *args: Any) -> None:
        pass
