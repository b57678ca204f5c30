"""Verifying CI OIDC tokens (GitHub Actions, GitLab CI) and mapping them to a pipeline."""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import socket
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import jwt
import requests.certs

from bot.core.net import check_url
from bot.core.policy.oidc import OidcConfig, claim_text

log = logging.getLogger(__name__)

#: Asymmetric algorithms only: `none` and the HMAC family (alg confusion with a public key)
#: never reach a key.
ALGORITHMS = ("RS256", "ES256")
#: Clock skew tolerated on exp / nbf / iat between the CI provider and us.
LEEWAY_SECONDS = 30
#: Refuse anything larger before parsing it (real CI tokens are 1–3 KiB).
MAX_TOKEN_BYTES = 16 * 1024
#: Discovery documents and key sets larger than this are refused.
MAX_DOCUMENT_BYTES = 512 * 1024
GITHUB_ISSUER = "https://token.actions.githubusercontent.com"


class OidcRejected(Exception):
    """The token was refused. `status` is the HTTP status to answer with (401, 403, 503);
    `reason` is short, safe to show the caller and never contains the token."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# ------------------------------------------------------------------------------ config


# ------------------------------------------------------------------------------ key sets


@dataclass
class _Fetch:
    """One fetch of an issuer's key set, in flight. It ends by `deadline` (time.monotonic())."""

    deadline: float
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class _KeySet:
    """The keys of one issuer, when they were fetched, the cool-down on refetching, and the
    one fetch in flight. `lock` guards these fields and is never held while fetching."""

    keys: dict[str, jwt.PyJWK] = field(default_factory=dict)
    fetched_at: float | None = None  # last successful fetch (started at)
    attempted_at: float | None = None  # last fetch started, successful or not
    fetch: _Fetch | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class OidcVerifier:
    """Verifies CI OIDC tokens against the issuers' published keys.

    One instance is shared by every request: it caches each issuer's key set (JWKS) for
    `jwks_max_age` seconds, and an unknown `kid` triggers at most one refetch per `cooldown`
    seconds per issuer, so a stream of made-up kids cannot turn us into a JWKS hammer.

    A fetch (discovery and key set together) runs in the background, one per issuer at a
    time, and is cut off `timeout` seconds after it starts however slowly the issuer answers.
    A token whose key is cached never waits for it, even while the set is being refreshed;
    a token whose `kid` is not cached waits for the fetch, at most until its deadline.

    `clock` drives the cache and the cool-down; exp / nbf / iat are checked by PyJWT against
    the wall clock with a leeway of LEEWAY_SECONDS.
    """

    def __init__(
        self,
        timeout: float = 5.0,
        cooldown: float = 60.0,
        clock: Callable[[], float] = time.time,
        *,
        jwks_max_age: float = 3600.0,
    ) -> None:
        self.timeout = timeout
        self.cooldown = cooldown
        self.jwks_max_age = jwks_max_age
        self._clock = clock
        self._sets: dict[tuple[str, str | None], _KeySet] = {}
        self._sets_lock = threading.Lock()

    # -------------------------------------------------------------- public

    def verify(self, token: str, configs: Mapping[str, OidcConfig]) -> tuple[str, dict[str, Any]]:
        """Return `(pipeline_name, claims)` for a valid token, or raise OidcRejected."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_BYTES:
            raise OidcRejected(401, "malformed token")
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise OidcRejected(401, "malformed token") from None

        alg = header.get("alg")
        if alg not in ALGORITHMS:
            raise OidcRejected(401, "unsupported algorithm")
        issuer = unverified.get("iss")
        candidates = {name: c for name, c in configs.items() if isinstance(issuer, str) and c.issuer == issuer}
        if not candidates:
            raise OidcRejected(401, "unknown issuer")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise OidcRejected(401, "token has no key id")

        # Configs sharing an issuer are expected to share its key set; the first one's
        # jwks_url (or discovery) is used.
        first = next(iter(candidates.values()))
        key = self._key_for(first.issuer, first.jwks_url, kid)
        if key.algorithm_name != alg:
            raise OidcRejected(401, "algorithm does not match the signing key")

        audiences = list(dict.fromkeys(c.audience for c in candidates.values()))
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=audiences,
                issuer=first.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise OidcRejected(401, "token expired") from None
        except jwt.ImmatureSignatureError:
            raise OidcRejected(401, "token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise OidcRejected(401, "wrong audience") from None
        except jwt.InvalidIssuerError:
            raise OidcRejected(401, "wrong issuer") from None
        except jwt.MissingRequiredClaimError as e:
            raise OidcRejected(401, f"missing claim {e.claim}") from None
        except jwt.InvalidSignatureError:
            raise OidcRejected(401, "bad signature") from None
        except jwt.InvalidAlgorithmError:
            raise OidcRejected(401, "unsupported algorithm") from None
        except jwt.PyJWTError:
            raise OidcRejected(401, "invalid token") from None

        for name, config in candidates.items():
            if config.matches(claims):
                return name, claims
        log.info(
            "oidc token from %s valid but matches no pipeline (%s)",
            issuer,
            _describe(claims),
        )
        raise OidcRejected(403, "no pipeline matches these claims")

    # -------------------------------------------------------------- keys

    def _key_for(self, issuer: str, jwks_url: str | None, kid: str) -> jwt.PyJWK:
        with self._sets_lock:
            ks = self._sets.setdefault((issuer, jwks_url), _KeySet())
        with ks.lock:
            key = ks.keys.get(kid)
            fetch = self._start_fetch(ks, issuer, jwks_url, unknown=key is None) or ks.fetch
        if key is not None:
            return key  # cached: answered now, whatever a refresh in flight is doing
        if fetch is not None:
            fetch.done.wait(max(0.0, fetch.deadline - time.monotonic()))
        with ks.lock:
            key, have_keys = ks.keys.get(kid), bool(ks.keys)
        if key is not None:
            return key
        if not have_keys:  # never fetched successfully
            raise OidcRejected(503, "issuer keys unavailable")
        raise OidcRejected(401, "unknown signing key")

    def _start_fetch(self, ks: _KeySet, issuer: str, jwks_url: str | None, unknown: bool) -> _Fetch | None:
        """Start fetching when the set is stale or lacks a kid, unless a fetch is in flight or
        one started less than `cooldown` ago. The caller holds `ks.lock`."""
        now = self._clock()
        stale = ks.fetched_at is None or now - ks.fetched_at >= self.jwks_max_age
        cooled = ks.attempted_at is None or now - ks.attempted_at >= self.cooldown
        # A stale set is refreshed at most once per cool-down too: an issuer that is down
        # is not retried on every request, and its last good keys stay in use meanwhile.
        if ks.fetch is not None or not (stale or unknown) or not cooled:
            return None
        ks.attempted_at = now
        ks.fetch = _Fetch(deadline=time.monotonic() + self.timeout)
        threading.Thread(
            target=self._fetch_in_background,
            args=(ks, ks.fetch, issuer, jwks_url, now),
            name="jit-oidc-keys",
            daemon=True,
        ).start()
        return ks.fetch

    def _fetch_in_background(
        self, ks: _KeySet, fetch: _Fetch, issuer: str, jwks_url: str | None, started: float
    ) -> None:
        keys: dict[str, jwt.PyJWK] = {}
        try:
            keys = self._fetch_keys(issuer, jwks_url, fetch.deadline)
        except _FetchError as e:
            log.warning("oidc: cannot fetch the key set of %s: %s", issuer, e)
        except Exception:  # noqa: BLE001 - the fetch must always end and wake its waiters
            log.exception("oidc: fetching the key set of %s failed", issuer)
        finally:
            with ks.lock:
                if keys:
                    ks.keys, ks.fetched_at = keys, started
                ks.fetch = None
            fetch.done.set()

    def _fetch_keys(self, issuer: str, jwks_url: str | None, deadline: float) -> dict[str, jwt.PyJWK]:
        if jwks_url is None:
            discovery = _get_json(issuer.rstrip("/") + "/.well-known/openid-configuration", deadline)
            if discovery.get("issuer") != issuer:
                raise _FetchError("discovery document names a different issuer")
            jwks_url = discovery.get("jwks_uri")
            if not isinstance(jwks_url, str):
                raise _FetchError("discovery document has no jwks_uri")
            try:
                check_url(jwks_url, "jwks_uri")
            except ValueError as e:
                raise _FetchError(str(e)) from None
        document = _get_json(jwks_url, deadline)
        keys: dict[str, jwt.PyJWK] = {}
        for jwk in document.get("keys") or []:
            if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
                continue
            kid = jwk.get("kid")
            if not isinstance(kid, str):
                continue
            try:
                key = jwt.PyJWK(jwk)
            except jwt.PyJWTError:
                continue  # a key type we do not use (or cannot parse): skip it, keep the rest
            if key.algorithm_name in ALGORITHMS:
                keys[kid] = key
        if not keys:
            raise _FetchError("key set has no usable RS256/ES256 keys")
        return keys


class _FetchError(Exception):
    pass


# ------------------------------------------------------------------------------ fetching

# No HTTP client we depend on bounds a whole response: `requests`' timeout applies to each
# socket read, and an issuer sending one byte a second never trips it. http.client lets us
# hold the socket from the start, so a watchdog can shut it down at the deadline, whether
# the TLS handshake, the headers or the body is trickling in.


class _Watchdog:
    """Shuts a connection's socket down at the deadline; its reader then fails at once."""

    def __init__(self, conn: http.client.HTTPConnection, seconds: float) -> None:
        self.conn = conn
        #: Once connected: http.client lets go of `conn.sock` when the response is to close
        #: the connection, but its body is still read from this socket.
        self.sock: socket.socket | None = None
        self.fired = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        sock = self.sock or self.conn.sock  # during connect: the socket being set up
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # closed already

    def cancel(self) -> None:
        self._timer.cancel()


class _TlsConnection(http.client.HTTPSConnection):
    """HTTPSConnection whose TLS handshake runs on `self.sock`, where the watchdog sees it
    (http.client hands the socket over only after the handshake)."""

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)  # TCP, and the proxy's CONNECT if any
        host = self._tunnel_host or self.host
        self.sock = self._context.wrap_socket(self.sock, server_hostname=host, do_handshake_on_connect=False)
        self.sock.do_handshake()


def _tls_context() -> ssl.SSLContext:
    """Verifying certificates against the bundle `requests` would use (its environment
    variables included), so an issuer trusted before is trusted now."""
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    return ssl.create_default_context(cafile=bundle or requests.certs.where())


def _connect(url: str, timeout: float) -> http.client.HTTPConnection:
    """A connection to `url`'s host: https through the environment's proxy as `requests`
    would (HTTPS_PROXY, NO_PROXY); plain http (loopback issuers only) directly."""
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port
    if parts.scheme != "https":
        return http.client.HTTPConnection(host, port, timeout=timeout)
    proxy = None if urllib.request.proxy_bypass(host) else urllib.request.getproxies().get("https")
    if not proxy:
        return _TlsConnection(host, port, timeout=timeout, context=_tls_context())
    p = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    headers = {}
    if p.username:
        creds = f"{unquote(p.username)}:{unquote(p.password or '')}".encode()
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(creds).decode()
    conn = _TlsConnection(p.hostname or "", p.port or 80, timeout=timeout, context=_tls_context())
    conn.set_tunnel(host, port or 443, headers=headers)
    return conn


def _get_json(url: str, deadline: float) -> dict[str, Any]:
    """GET a JSON object of at most MAX_DOCUMENT_BYTES, all of it before `deadline`
    (time.monotonic()). No redirects are followed."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise _FetchError(f"GET {url}: out of time")
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn = _connect(url, timeout=left)
    watchdog = _Watchdog(conn, left)
    resp = None
    try:
        conn.connect()
        watchdog.sock = conn.sock
        conn.request("GET", target, headers=_HEADERS)
        resp = conn.getresponse()
        if resp.status != 200:
            raise _FetchError(f"GET {url}: HTTP {resp.status}")
        if resp.getheader("Content-Encoding", "identity").lower() != "identity":
            raise _FetchError(f"GET {url}: unexpected Content-Encoding")
        body = resp.read(MAX_DOCUMENT_BYTES + 1)
        if len(body) > MAX_DOCUMENT_BYTES:
            raise _FetchError(f"GET {url}: document too large")
        if resp.length:  # Content-Length promised more than arrived
            raise http.client.IncompleteRead(body, resp.length)
    except (OSError, http.client.HTTPException) as e:
        why = "not complete by the deadline" if watchdog.fired else type(e).__name__
        raise _FetchError(f"GET {url}: {why}") from None
    finally:
        watchdog.cancel()
        if resp is not None:
            resp.close()
        conn.close()
    if watchdog.fired:  # a body without a length, cut short
        raise _FetchError(f"GET {url}: not complete by the deadline")
    try:
        data = json.loads(body)
    except ValueError:
        raise _FetchError(f"GET {url}: not JSON") from None
    if not isinstance(data, dict):
        raise _FetchError(f"GET {url}: not a JSON object")
    return data


_HEADERS = {"Accept": "application/json", "Accept-Encoding": "identity", "User-Agent": "jit-bot"}


def _describe(claims: Mapping[str, Any]) -> str:
    """A few identifying claims for logs (never the token itself)."""
    keys = ("repository", "project_path", "ref", "environment", "aud")
    return ", ".join(f"{k}={claims[k]!r}" for k in keys if k in claims)


# ------------------------------------------------------------------------------ context


def _github_server_url(issuer: str) -> str:
    """Where a GitHub token's runs live: github.com, GHE.com (`token.actions.<sub>.ghe.com`)
    or GitHub Enterprise Server (`https://<host>/_services/token`). The token has no
    server-URL claim, so it is derived from the (verified) issuer."""
    parts = urlsplit(issuer)
    host = parts.hostname or ""
    if host.startswith("token.actions.") and host.endswith(".ghe.com"):
        return "https://" + host.removeprefix("token.actions.")
    if parts.path.rstrip("/").endswith("/_services/token"):
        return f"{parts.scheme}://{parts.netloc}"
    return "https://github.com"


def _text(value: Any) -> str | None:
    return None if value is None or value == "" else claim_text(value)


#: A GitLab token's `ref_type` → the prefix of its full ref (`ref_path`).
_GITLAB_REF_PREFIX = {"branch": "refs/heads/", "tag": "refs/tags/"}


def _gitlab_ref(claims: Mapping[str, Any]) -> str | None:
    """GitLab's `ref` is a bare name (`main`), the same for a branch and a tag: use `ref_path`
    (`refs/heads/main` / `refs/tags/main`), or build it from `ref_type` when an older GitLab
    sends no `ref_path`. Without either the ref's kind is unknown, so there is no `ref`."""
    ref_path = _text(claims.get("ref_path"))
    if ref_path is not None:
        return ref_path
    prefix = _GITLAB_REF_PREFIX.get(_text(claims.get("ref_type")) or "")
    ref = _text(claims.get("ref"))
    return prefix + ref if prefix and ref else None


def verified_context(claims: Mapping[str, Any]) -> tuple[dict[str, str], str | None]:
    """The request context and requester a verified token vouches for.

    `ref` is always the full ref, for both providers: `refs/heads/main` for the branch main,
    `refs/tags/main` for a tag named main (GitLab's bare `ref` claim is replaced by its
    `ref_path`), so an `auto_approve` rule on `ref: refs/heads/main` never matches a tag.
    `ref_type` (branch / tag) and `ref_protected` ("true" / "false") come along as claimed.

    GitHub Actions: repository, repository_id, ref, ref_type, ref_protected, commit, workflow,
    job_workflow_ref, run_id, run_attempt, actor, environment, run_url; requested_by = actor.
    GitLab CI: repository (project_path), project_id, ref, ref_type, ref_protected, commit,
    pipeline_id, job_id, user_login, environment, ci_config_ref_uri, run_url;
    requested_by = user_login. The claims naming one run — GitHub repository_id + run_id +
    run_attempt (+ job_workflow_ref), GitLab project_id + pipeline_id + job_id — are kept so
    a request can be tied to the run that made it. Missing claims are left out.
    """
    iss = str(claims.get("iss") or "")
    context: dict[str, str | None]
    if "project_path" in claims:  # GitLab
        project, pipeline = _text(claims.get("project_path")), _text(claims.get("pipeline_id"))
        run_url = f"{iss.rstrip('/')}/{project}/-/pipelines/{pipeline}" if iss and project and pipeline else None
        context = {
            "repository": project,
            "project_id": _text(claims.get("project_id")),
            "ref": _gitlab_ref(claims),
            "ref_type": _text(claims.get("ref_type")),
            "ref_protected": _text(claims.get("ref_protected")),
            "commit": _text(claims.get("sha")),
            "pipeline_id": pipeline,
            "job_id": _text(claims.get("job_id")),
            "user_login": _text(claims.get("user_login")),
            "environment": _text(claims.get("environment")),
            "ci_config_ref_uri": _text(claims.get("ci_config_ref_uri")),
            "run_url": run_url,
        }
        requested_by = _text(claims.get("user_login"))
    else:  # GitHub Actions
        repo, run_id = _text(claims.get("repository")), _text(claims.get("run_id"))
        run_url = f"{_github_server_url(iss)}/{repo}/actions/runs/{run_id}" if repo and run_id else None
        context = {
            "repository": repo,
            "repository_id": _text(claims.get("repository_id")),
            "ref": _text(claims.get("ref")),
            "ref_type": _text(claims.get("ref_type")),
            "ref_protected": _text(claims.get("ref_protected")),
            "commit": _text(claims.get("sha")),
            "workflow": _text(claims.get("workflow")),
            "job_workflow_ref": _text(claims.get("job_workflow_ref")),
            "run_id": run_id,
            "run_attempt": _text(claims.get("run_attempt")),
            "actor": _text(claims.get("actor")),
            "environment": _text(claims.get("environment")),
            "run_url": run_url,
        }
        requested_by = _text(claims.get("actor"))
    return {k: v for k, v in context.items() if v is not None}, requested_by
