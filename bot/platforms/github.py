"""jit as a GitHub App: the app JWT, installation tokens (cached until shortly before they expire), the
workflow run a deployment belongs to, and the review of a custom deployment protection rule."""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from redis import Redis

from bot.core.crypto import Vault
from bot.platforms.http import ApiError, call
from bot.store import keys

#: GitHub accepts app JWTs of at most 10 minutes; `iat` is set a minute back for clock drift.
JWT_BACKDATE_S = 60
JWT_LIFETIME_S = 540
#: An installation token (valid one hour) is replaced this long before it expires.
TOKEN_MARGIN_S = 300
API_VERSION = "2022-11-28"


class UnknownInstallation(Exception):
    """GitHub does not know this installation of the app (or it was removed)."""


def read_private_key(path: str) -> rsa.RSAPrivateKey:
    """The app's private key (the PEM file GitHub lets you download). ValueError when it is not one."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise ValueError(f"{path} is not a PEM private key without a passphrase") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{path} is not an RSA private key (GitHub App keys are RSA)")
    return key


def signature_ok(secret: str, body: bytes, header: str | None) -> bool:
    """`X-Hub-Signature-256` is `sha256=` and the HMAC-SHA256 of the raw body, compared in constant time."""
    if not header or not header.startswith("sha256="):
        return False
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), header.strip().encode("utf-8", "replace"))


class GitHubApp:
    def __init__(self, app_id: str, private_key: rsa.RSAPrivateKey, api_url: str, redis: Redis, vault: Vault) -> None:
        self.app_id = app_id
        self.private_key = private_key
        self.api_url = api_url.rstrip("/")
        self.redis = redis
        self.vault = vault
        self.session = requests.Session()

    @classmethod
    def from_settings(cls, settings: Any, redis: Redis, vault: Vault) -> GitHubApp | None:
        if not settings.github_app_id or not settings.github_app_private_key_file:
            return None
        key = read_private_key(settings.github_app_private_key_file)
        return cls(settings.github_app_id, key, settings.github_api_url, redis, vault)

    # ---------------------------------------------------------------- authentication

    def app_jwt(self, now: float | None = None) -> str:
        """The app's own credential: RS256, `iss` the app id, at most 10 minutes long."""
        t = int(now if now is not None else time.time())
        claims = {"iat": t - JWT_BACKDATE_S, "exp": t + JWT_LIFETIME_S, "iss": self.app_id}
        return jwt.encode(claims, self.private_key, algorithm="RS256")

    def _headers(self, bearer: str) -> dict[str, str]:
        return {
            "Accept": "application/vnd.github+json",
            "Authorization": f"Bearer {bearer}",
            "X-GitHub-Api-Version": API_VERSION,
            "User-Agent": "jit-bot",
        }

    def installation_token(self, installation_id: int | str) -> str:
        """A token acting as the app's installation, cached (sealed) in Redis for every process
        until five minutes before it expires. UnknownInstallation when GitHub has no such one."""
        key = keys.github_installation_token(str(installation_id))
        sealed = self.redis.get(key)
        if sealed:
            try:
                return self.vault.open(sealed)["token"]
            except Exception:  # noqa: BLE001 - sealed under a retired key: fetch a new one
                self.redis.delete(key)
        try:
            data = call(
                self.session,
                "POST",
                f"{self.api_url}/app/installations/{int(installation_id)}/access_tokens",
                headers=self._headers(self.app_jwt()),
            )
        except ApiError as e:
            if e.status in (403, 404, 422):
                raise UnknownInstallation(f"installation {installation_id}: {e}") from None
            raise
        token = str((data or {}).get("token") or "")
        if not token:
            raise ApiError(502, "no token in GitHub's answer")
        expires = _expiry((data or {}).get("expires_at"))
        ttl_s = int(expires - time.time()) - TOKEN_MARGIN_S if expires else 0
        if ttl_s > 0:
            self.redis.set(key, self.vault.seal({"token": token}), ex=ttl_s)
        return token

    def forget_token(self, installation_id: int | str) -> None:
        self.redis.delete(keys.github_installation_token(str(installation_id)))

    # ---------------------------------------------------------------- calls

    def _as_installation(self, installation_id: int | str, method: str, url: str, body: dict | None = None) -> Any:
        token = self.installation_token(installation_id)
        try:
            return call(self.session, method, url, headers=self._headers(token), body=body)
        except ApiError as e:
            if e.status == 401:  # revoked or expired early: the next attempt fetches a new one
                self.forget_token(installation_id)
            raise

    def workflow_run(self, installation_id: int | str, repository: str, run_id: int) -> dict[str, Any]:
        """`GET /repos/{owner}/{repo}/actions/runs/{run_id}` (needs Actions: read)."""
        url = f"{self.api_url}/repos/{_repo_path(repository)}/actions/runs/{int(run_id)}"
        data = self._as_installation(installation_id, "GET", url)
        if not isinstance(data, dict):
            raise ApiError(502, "the workflow run is not a JSON object")
        return data

    def review(self, installation_id: int | str, callback_url: str, environment: str, state: str, comment: str) -> None:
        """Approve or reject the protection rule at the event's `deployment_callback_url` (needs
        Deployments: read and write)."""
        body = {"environment_name": environment, "state": state, "comment": comment}
        self._as_installation(installation_id, "POST", callback_url, body)

    # ---------------------------------------------------------------- the callback URL

    def run_of_callback(self, callback_url: str, repository: str) -> int | None:
        """The run id in a `deployment_callback_url`, if the URL is this API's review endpoint for
        `repository`; None otherwise (an installation token is never sent anywhere else)."""
        pattern = (
            re.escape(f"{self.api_url}/repos/")
            + r"([^/?#]+/[^/?#]+)/actions/runs/(\d{1,20})/deployment_protection_rule"
        )
        m = re.fullmatch(pattern, callback_url or "")
        if m is None or m.group(1).casefold() != repository.casefold():
            return None
        return int(m.group(2))


def _repo_path(repository: str) -> str:
    owner, _, name = repository.partition("/")
    return f"{quote(owner, safe='')}/{quote(name, safe='')}"


def _expiry(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
