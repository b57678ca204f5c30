#!/usr/bin/env python3
"""The pipeline side of jit: ask for a credential, wait for approval, print it, release it.

Standard library only, one file: install it alone (`pip install jit-client`, command
`jit-client`), use it as `jit request`/`jit release` from the server's package, or fetch it
from the server itself and run it with no install at all:

    curl -fsS "$JIT_URL/v1/client.py" -o jit_client.py
    python3 jit_client.py request deploy-db --reason "migrate orders" --format env
    python3 jit_client.py extend "$JIT_REQUEST_ID" --ttl 15m --reason "migration is slow"
    python3 jit_client.py release "$JIT_REQUEST_ID"

Exit codes: 0 granted (or released), 10 denied, 11 timed out, 12 expired / revoked /
cancelled before the credential was fetched, 2 usage error, 1 anything else.

Variables. The client reads its own settings from CLIENT_ENV: JIT_URL, JIT_TOKEN,
JIT_AUDIENCE, JIT_IDEMPOTENCY_KEY, JIT_ENVIRONMENT, JIT_ID_TOKEN (--oidc gitlab),
JIT_REQUEST_ID and JIT_REQUEST_TOKEN (release, extend). `--format env|github|gitlab` exports:

    JIT_CREDENTIAL_<KEY>  each credential field: `password` -> JIT_CREDENTIAL_PASSWORD,
                          `db-host` -> JIT_CREDENTIAL_DB_HOST, the `token` backend's `token`
                          -> JIT_CREDENTIAL_TOKEN (gitlab: a multi-line value goes to a 0600
                          file named by JIT_CREDENTIAL_<KEY>_FILE)
    JIT_CREDENTIAL        the whole credential as one line of JSON (env and github only)
    JIT_REQUEST_ID, JIT_REQUEST_TOKEN   what a later `release` reads
    JIT_EXPIRES_AT        when the credential stops working (RFC 3339)

A credential field is never exported under one of the client's own names, so a second
`jit request` in the same shell still authenticates as the pipeline.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import ipaddress
import json
import math
import os
import re
import shlex
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, TextIO

EXIT_GRANTED = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_DENIED = 10
EXIT_TIMED_OUT = 11
EXIT_GONE = 12

#: Statuses the server keeps a long-poll open through.
WAITING = frozenset({"pending", "approved"})
#: Final statuses and the exit code each one ends the client with.
FINAL_EXIT = {
    "denied": EXIT_DENIED,
    "timed_out": EXIT_TIMED_OUT,
    "expired": EXIT_GONE,
    "revoked": EXIT_GONE,
    "cancelled": EXIT_GONE,
    "failed": EXIT_ERROR,
}
LONG_POLL_SECONDS = 60
MAX_BACKOFF_SECONDS = 10.0
#: A server that cannot be reached at all is given this long to create the request.
CREATE_RETRY_SECONDS = 300.0
RELEASE_RETRY_SECONDS = 60.0
USER_AGENT = "jit-client/1"

#: Every environment variable the client reads for its own settings.
CLIENT_ENV = frozenset(
    {
        "JIT_URL",
        "JIT_TOKEN",
        "JIT_AUDIENCE",
        "JIT_IDEMPOTENCY_KEY",
        "JIT_ENVIRONMENT",
        "JIT_ID_TOKEN",
        "JIT_REQUEST_ID",
        "JIT_REQUEST_TOKEN",
    }
)
#: Credential fields are exported under this prefix, which none of CLIENT_ENV starts with;
#: the whole credential (JSON) goes to CREDENTIAL_VAR.
CREDENTIAL_PREFIX = "JIT_CREDENTIAL_"
CREDENTIAL_VAR = "JIT_CREDENTIAL"


class UsageError(Exception):
    """Bad arguments or environment: exit 2."""


class ClientError(Exception):
    """Anything else that stops the client: exit `code` (1 unless said otherwise)."""

    def __init__(self, message: str, code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------------ pure parts


_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | int) -> int:
    """`90s`, `15m`, `2h`, `1d` or integer seconds → seconds. Raises ValueError."""
    if isinstance(text, bool):
        raise ValueError("not a duration")
    if isinstance(text, int):
        seconds = text
    else:
        m = _DURATION.match(str(text))
        if not m:
            raise ValueError(f"{text!r} is not a duration (use 90s, 15m, 2h or integer seconds)")
        seconds = int(m.group(1)) * _UNIT[m.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


def _duration_arg(text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def ci_provider(env: Mapping[str, str]) -> str | None:
    if env.get("GITHUB_ACTIONS") == "true" or (env.get("GITHUB_RUN_ID") and env.get("GITHUB_REPOSITORY")):
        return "github"
    if env.get("GITLAB_CI") == "true" or (env.get("CI_JOB_ID") and env.get("CI_PROJECT_PATH")):
        return "gitlab"
    return None


def _key(prefix: str, parts: Iterable[str]) -> str:
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    return f"jit-{prefix}-{digest[:40]}"


def derive_idempotency_key(action: str, env: Mapping[str, str]) -> tuple[str, bool]:
    """The Idempotency-Key for this CI job and action, and whether it is derived (else random).

    A retried step of the same job attempt finds the same request again; a re-run of the
    job (new attempt or job id) asks anew. Matrix legs share GITHUB_JOB: give them their
    own key with --idempotency-key if they must not share one request.
    """
    provider = ci_provider(env)
    if provider == "github":
        parts = [env.get(k, "") for k in ("GITHUB_REPOSITORY", "GITHUB_RUN_ID")]
        parts += [env.get("GITHUB_RUN_ATTEMPT", "1"), env.get("GITHUB_JOB", ""), action]
        if all(parts[:2]):
            return _key("gh", ["github", *parts]), True
    elif provider == "gitlab":
        parts = [env.get("CI_PROJECT_PATH", ""), env.get("CI_JOB_ID", ""), action]
        if all(parts[:2]):
            return _key("gl", ["gitlab", *parts]), True
    return f"jit-rnd-{uuid.uuid4().hex}", False


def ci_context(env: Mapping[str, str]) -> dict[str, str]:
    """What the CI job says about itself (the server trusts a verified OIDC token over this)."""
    provider = ci_provider(env)
    ctx: dict[str, str | None] = {}
    if provider == "github":
        server = env.get("GITHUB_SERVER_URL", "https://github.com").rstrip("/")
        repo, run_id = env.get("GITHUB_REPOSITORY"), env.get("GITHUB_RUN_ID")
        ctx = {
            "repository": repo,
            "ref": env.get("GITHUB_REF"),
            "commit": env.get("GITHUB_SHA"),
            "run_url": f"{server}/{repo}/actions/runs/{run_id}" if repo and run_id else None,
            "environment": env.get("JIT_ENVIRONMENT"),  # Actions has no variable for it
        }
    elif provider == "gitlab":
        ctx = {
            "repository": env.get("CI_PROJECT_PATH"),
            "ref": env.get("CI_COMMIT_REF_NAME"),
            "commit": env.get("CI_COMMIT_SHA"),
            "run_url": env.get("CI_PIPELINE_URL") or env.get("CI_JOB_URL"),
            "environment": env.get("CI_ENVIRONMENT_NAME") or env.get("JIT_ENVIRONMENT"),
        }
    elif env.get("JIT_ENVIRONMENT"):
        ctx = {"environment": env["JIT_ENVIRONMENT"]}
    return {k: v for k, v in ctx.items() if v}


def exit_code_for_status(status: str) -> int | None:
    """0 for active, the FINAL_EXIT code for a final status, None while still waiting."""
    if status == "active":
        return EXIT_GRANTED
    if status in WAITING:
        return None
    return FINAL_EXIT.get(status, EXIT_ERROR)


def env_name(key: str) -> str:
    """`password` → `JIT_CREDENTIAL_PASSWORD`, `db-host` → `JIT_CREDENTIAL_DB_HOST`."""
    return CREDENTIAL_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", str(key)).upper()


def credential_json(credential: Mapping[str, Any]) -> str:
    """The whole credential on one line, field names as the server sent them."""
    return json.dumps(dict(credential), separators=(",", ":"), ensure_ascii=False)


def value_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def credential_vars(
    request_id: str,
    credential: Mapping[str, Any],
    expires_at: str | None,
    request_token: str | None = None,
    *,
    whole: bool = True,
) -> list[tuple[str, str]]:
    """The variables a credential becomes: JIT_CREDENTIAL_<KEY> per credential key, then (with
    `whole`) JIT_CREDENTIAL, then the request id, the expiry and (when given) the request token
    a later `jit release` needs. No credential key can produce one of CLIENT_ENV's names."""
    out = [(env_name(k), value_text(v)) for k, v in credential.items()]
    if whole:
        out.append((CREDENTIAL_VAR, credential_json(credential)))
    out += [("JIT_REQUEST_ID", request_id), ("JIT_EXPIRES_AT", expires_at or "")]
    if request_token:
        out.append(("JIT_REQUEST_TOKEN", request_token))
    return out


def secret_values(credential: Mapping[str, Any]) -> list[str]:
    """Every credential value is treated as secret (we cannot tell a host from a password),
    and so is the JSON of all of them (JIT_CREDENTIAL), escapes and all."""
    values = [t for t in (value_text(v) for v in credential.values()) if t]
    return [*values, credential_json(credential)] if credential else values


def format_json(
    request_id: str,
    credential: Mapping[str, Any],
    expires_at: str | None,
    request_token: str | None = None,
) -> str:
    body: dict[str, Any] = {"id": request_id, "expires_at": expires_at}
    if request_token:
        body["request_token"] = request_token
    body["credential"] = dict(credential)
    return json.dumps(body, indent=2) + "\n"


def format_env(variables: Iterable[tuple[str, str]]) -> str:
    """`export NAME='value'` lines, safe to `eval` in a POSIX shell."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in variables)


def _command_data(value: str) -> str:
    """Escape a workflow command's data the way the Actions runner unescapes it."""
    return value.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def github_masks(values: Iterable[str]) -> str:
    """`::add-mask::` lines for every value; a multi-line value is masked line by line too,
    because the runner matches log lines one at a time."""
    lines: list[str] = []
    seen: set[str] = set()
    for value in values:
        pieces = [value] if "\n" not in value and "\r" not in value else value.splitlines()
        for piece in pieces:
            if piece.strip() and piece not in seen:
                seen.add(piece)
                lines.append(f"::add-mask::{_command_data(piece)}\n")
    return "".join(lines)


def github_env_block(variables: Iterable[tuple[str, str]]) -> str:
    """Lines for `$GITHUB_ENV`: `NAME=value`, or the heredoc form for multi-line values."""
    out = []
    for name, value in variables:
        if "\n" in value or "\r" in value:
            delimiter = f"ghadelimiter_{uuid.uuid4()}"
            while delimiter in value:
                delimiter = f"ghadelimiter_{uuid.uuid4()}"
            out.append(f"{name}<<{delimiter}\n{value}\n{delimiter}\n")
        else:
            out.append(f"{name}={value}\n")
    return "".join(out)


def write_github(variables: list[tuple[str, str]], secrets: Iterable[str], env_file: str, out: TextIO) -> None:
    """Mask every secret on stdout first, then append the variables to `$GITHUB_ENV`."""
    out.write(github_masks(secrets))
    out.flush()
    with open(env_file, "a", encoding="utf-8") as f:
        f.write(github_env_block(variables))


def dotenv_block(variables: Iterable[tuple[str, str]], side_file: Callable[[str, str], str]) -> str:
    """A GitLab `artifacts:reports:dotenv` file: `NAME=value`, no quotes, no blank lines.
    GitLab takes no multi-line values: those go to a file named in `NAME_FILE`."""
    out = []
    for name, value in variables:
        if "\n" in value or "\r" in value:
            out.append(f"{name}_FILE={side_file(name, value)}\n")
        else:
            out.append(f"{name}={value}\n")
    return "".join(out)


def _write_private(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def _span(seconds: int) -> str:
    """90 → `1m30s`, 5 → `5s`."""
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ------------------------------------------------------------------------ HTTP


class ApiError(Exception):
    """A 4xx answer: the server refused; do not retry."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} (HTTP {status}, {code})")
        self.status = status
        self.code = code
        self.message = message


class Transient(Exception):
    """A network error, 5xx or 429: worth retrying with the same request."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    # A redirect would carry the bearer token to wherever it points: refuse it.
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def http_json(
    method: str,
    url: str,
    *,
    token: str | None = None,
    body: Any = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
    auth_scheme: str = "Bearer",
) -> tuple[int, Any]:
    """One HTTP exchange. Returns (status, JSON) for 2xx; raises ApiError or Transient."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Accept", "application/json")
    req.add_header("User-Agent", USER_AGENT)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"{auth_scheme} {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, _read_quietly(e)
        retry_after = _retry_after(e.headers.get("Retry-After") if e.headers else None)
        if status >= 500 or status in (408, 429):
            raise Transient(f"HTTP {status}", retry_after) from None
        code, message = _error_of(raw, status)
        raise ApiError(status, code, message) from None
    except (urllib.error.URLError, http.client.HTTPException, OSError) as e:  # incl. timeouts
        reason = getattr(e, "reason", None) or e
        raise Transient(f"{type(e).__name__}: {reason}") from None
    try:
        return status, json.loads(raw) if raw else {}
    except ValueError:
        raise Transient(f"HTTP {status} with a body that is not JSON") from None


def _read_quietly(e: urllib.error.HTTPError) -> bytes:
    try:
        return e.read()
    except Exception:  # noqa: BLE001 - the status is what matters
        return b""


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


def _error_of(raw: bytes, status: int) -> tuple[str, str]:
    try:
        data = json.loads(raw)
        if isinstance(data, dict):
            return str(data.get("error") or "error"), str(data.get("message") or data)
    except ValueError:
        pass
    text = raw.decode("utf-8", "replace").strip()[:200]
    return "error", text or f"HTTP {status}"


# ------------------------------------------------------------------------ the run


class Runner:
    """One client invocation: its arguments, environment, output streams and clock."""

    def __init__(
        self,
        args: argparse.Namespace,
        env: Mapping[str, str],
        out: TextIO,
        err: TextIO,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        http: Callable[..., tuple[int, Any]] | None = None,
    ) -> None:
        self.args = args
        self.env = env
        self.out = out
        self.err = err
        self.sleep = sleep
        self.clock = clock
        self.http = http or http_json
        self.base = args.url.rstrip("/")
        self.started = clock()

    # -------------------------------------------------------------- helpers

    def say(self, text: str, *, always: bool = False) -> None:
        if always or not self.args.quiet:
            print(f"jit: {text}", file=self.err, flush=True)

    def call(self, method: str, path: str, deadline: float, what: str, **kw: Any) -> Any:
        """`http` with retries (exponential backoff up to MAX_BACKOFF_SECONDS) on Transient,
        until `deadline`; the request is identical every time, so a retry never asks twice.
        The first failure is announced with the deadline even under --quiet: minutes of
        silence in a CI log look like a hang."""
        delay = 1.0
        announced = False
        while True:
            try:
                return self.http(method, self.base + path, **kw)
            except Transient as e:
                now = self.clock()
                if now >= deadline:
                    raise ClientError(f"{what}: giving up after retries ({e})") from None
                wait = min(e.retry_after or delay, MAX_BACKOFF_SECONDS, max(0.0, deadline - now))
                if not announced:
                    announced = True
                    left = math.ceil(deadline - now)
                    until = datetime.now(timezone.utc) + timedelta(seconds=left)  # noqa: UP017 - 3.10
                    self.say(
                        f"{what}: waiting for {self.base} ({e}); retrying for up to "
                        f"{_span(left)}, until {until:%Y-%m-%dT%H:%M:%SZ}",
                        always=True,
                    )
                else:
                    self.say(f"{what}: {e}; retrying in {wait:.0f}s")
                self.sleep(wait)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    def elapsed(self) -> str:
        return _span(int(self.clock() - self.started))

    # -------------------------------------------------------------- request

    def pipeline_token(self) -> str:
        a = self.args
        if a.oidc == "github":
            url = self.env.get("ACTIONS_ID_TOKEN_REQUEST_URL")
            bearer = self.env.get("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
            if not url or not bearer:
                raise UsageError(
                    "--oidc github needs ACTIONS_ID_TOKEN_REQUEST_URL/_TOKEN: "
                    "give the job `permissions: id-token: write`"
                )
            sep = "&" if "?" in url else "?"
            full = f"{url}{sep}audience={urllib.parse.quote(a.audience, safe='')}"
            deadline = self.clock() + 60
            delay = 1.0
            while True:
                try:
                    _, data = self.http("GET", full, token=bearer, auth_scheme="bearer")
                    break
                except Transient as e:
                    if self.clock() >= deadline:
                        raise ClientError(f"cannot get a GitHub OIDC token: {e}") from None
                    self.sleep(delay)
                    delay = min(delay * 2, MAX_BACKOFF_SECONDS)
                except ApiError as e:
                    raise ClientError(f"cannot get a GitHub OIDC token: {e.message}") from None
            value = data.get("value") if isinstance(data, dict) else None
            if not isinstance(value, str) or not value:
                raise ClientError("the GitHub OIDC token endpoint returned no token")
            return value
        if a.oidc == "gitlab":
            value = self.env.get(a.oidc_env)
            if not value:
                raise UsageError(
                    f"--oidc gitlab reads the token from ${a.oidc_env}: add to the job\n"
                    f"  id_tokens:\n    {a.oidc_env}:\n      aud: {a.audience}"
                )
            return value
        if a.token:
            return a.token
        raise UsageError("no credentials: pass --token (or set JIT_TOKEN) or --oidc github|gitlab")

    def request(self) -> int:
        a = self.args
        if a.format == "github" and not self.env.get("GITHUB_ENV"):
            raise UsageError("--format github needs $GITHUB_ENV (run it in a GitHub Actions step)")
        token = self.pipeline_token()
        key = a.idempotency_key
        if not key:
            key, derived = derive_idempotency_key(a.action, self.env)
            if not derived:
                self.say(f"idempotency key {key} (not in CI: a new request every run)")
        body: dict[str, Any] = {"action": a.action, "reason": a.reason}
        if a.ttl is not None:
            body["ttl"] = a.ttl
        requested_by = a.requested_by or self.env.get("GITHUB_ACTOR") or self.env.get("GITLAB_USER_LOGIN")
        if requested_by:
            body["requested_by"] = requested_by
        context = ci_context(self.env)
        if context:
            body["context"] = context

        deadline = self.started + a.timeout
        try:
            status, created = self.call(
                "POST",
                "/v1/requests",
                min(deadline, self.started + CREATE_RETRY_SECONDS),
                "creating the request",
                token=token,
                body=body,
                headers={"Idempotency-Key": key},
            )
        except ApiError as e:
            raise ClientError(f"the request was refused: {e.message} ({e.code})") from None
        req_id, req_token = created.get("id"), created.get("request_token")
        if not req_id or not req_token:
            raise ClientError("the server's answer has no id or request_token")
        self.req_id, self.req_token = str(req_id), str(req_token)
        verb = "found again" if status == 200 else "created"
        self.say(f"request {self.req_id} for {a.action} {verb}; {self._progress(created)}")
        if created.get("approvers_pending"):
            self.say("waiting for: " + ", ".join(map(str, created["approvers_pending"])))

        if a.format == "github":
            # Now, so that a later `jit release` step (if: always()) can cancel it even if
            # this step is cancelled or times out.
            write_github(
                [("JIT_REQUEST_ID", self.req_id), ("JIT_REQUEST_TOKEN", self.req_token)],
                [self.req_token],
                self.env["GITHUB_ENV"],
                self.out,
            )
        if not a.wait:
            return self._print_handle()

        try:
            final = self.wait(created, deadline)
        except KeyboardInterrupt:
            self.say("interrupted: cancelling the request", always=True)
            self.cancel()
            return 130
        code = exit_code_for_status(final["status"])
        if code == EXIT_GRANTED:
            return self.deliver(deadline)
        return self.explain(final, code)

    def wait(self, current: Mapping[str, Any], deadline: float) -> Mapping[str, Any]:
        """Long-poll until a status other than pending/approved, or the --timeout."""
        while current.get("status") in WAITING:
            remaining = deadline - self.clock()
            if remaining <= 0:
                return {**current, "status": "client_timeout"}
            wait = max(1, min(LONG_POLL_SECONDS, int(remaining)))
            try:
                _, current = self.call(
                    "GET",
                    f"/v1/requests/{urllib.parse.quote(self.req_id)}?wait={wait}",
                    deadline,
                    "waiting",
                    token=self.req_token,
                    timeout=wait + 30,
                )
            except ClientError:
                if self.clock() >= deadline:
                    return {**current, "status": "client_timeout"}
                raise
            except ApiError as e:
                raise ClientError(f"waiting failed: {e.message} ({e.code})") from None
            self.say(self._progress(current))
        return current

    def _progress(self, r: Mapping[str, Any]) -> str:
        ap = r.get("approvals") or {}
        text = f"{r.get('status')}, approvals {ap.get('count', 0)} of {ap.get('required', '?')}"
        return f"{text}, {self.elapsed()} elapsed"

    def explain(self, final: Mapping[str, Any], code: int | None) -> int:
        status = final.get("status")
        if status == "client_timeout":
            self.say(f"no decision within --timeout ({self.elapsed()}): cancelling", always=True)
            self.cancel()
            return EXIT_TIMED_OUT
        if status == "denied":
            who = final.get("decided_by") or "an approver"
            why = final.get("deny_reason") or "no reason given"
            self.say(f"request {self.req_id} denied by {who}: {why}", always=True)
        elif status == "failed":
            self.say(f"request {self.req_id} failed: the credential could not be issued", always=True)
        else:
            self.say(f"request {self.req_id} ended as {status}", always=True)
        return EXIT_ERROR if code is None else code

    def deliver(self, deadline: float) -> int:
        path = f"/v1/requests/{urllib.parse.quote(self.req_id)}/credential"
        grace = max(deadline, self.clock() + 60)
        while True:
            try:
                _, data = self.call("GET", path, grace, "fetching the credential", token=self.req_token)
                break
            except ApiError as e:
                if e.status == 409 and self.clock() < grace:  # not active yet: a race
                    self.sleep(1)
                    continue
                if e.status in (404, 410):
                    self.say(f"request {self.req_id}: the credential is gone ({e.message})", always=True)
                    return EXIT_GONE
                raise ClientError(f"cannot fetch the credential: {e.message} ({e.code})") from None
        credential = data.get("credential") if isinstance(data, dict) else None
        if not isinstance(credential, dict):
            raise ClientError("the server's answer has no credential")
        expires_at = data.get("expires_at")
        self.emit(credential, expires_at)
        return EXIT_GRANTED

    def emit(self, credential: Mapping[str, Any], expires_at: str | None) -> None:
        a, rid = self.args, self.req_id
        # github already has the request token in $GITHUB_ENV (written at creation)
        token = None if a.format == "github" else self.req_token
        # A GitLab dotenv report is small (5 KB by default): the fields only, not their JSON too.
        whole = a.format != "gitlab"
        variables = credential_vars(rid, credential, expires_at, token, whole=whole)
        names = ", ".join(n for n, _ in variables)
        if a.format == "json":
            self.out.write(format_json(rid, credential, expires_at, self.req_token))
        elif a.format == "env":
            self.out.write(format_env(variables))
        elif a.format == "github":
            write_github(variables, secret_values(credential), self.env["GITHUB_ENV"], self.out)
            print(f"jit: {rid} granted until {expires_at}; set {names}", file=self.out)
        elif a.format == "gitlab":
            base = os.path.dirname(os.path.abspath(a.dotenv_file))

            def side_file(name: str, value: str) -> str:
                path = os.path.join(base, f"{name.lower()}.secret")
                _write_private(path, value)
                return path

            _write_private(a.dotenv_file, dotenv_block(variables, side_file))
            self.out.write(rid + "\n")
            self.say(f"granted until {expires_at}; {a.dotenv_file} sets {names}")
        self.out.flush()
        if a.format != "gitlab":
            self.say(f"request {rid} granted until {expires_at}")

    def _print_handle(self) -> int:
        """--no-wait: hand over what a later step needs to check on or release the request."""
        a, handle = (
            self.args,
            [("JIT_REQUEST_ID", self.req_id), ("JIT_REQUEST_TOKEN", self.req_token)],
        )
        if a.format == "json":
            self.out.write(json.dumps({"id": self.req_id, "request_token": self.req_token}) + "\n")
        elif a.format == "env":
            self.out.write(format_env(handle))
        elif a.format == "gitlab":
            _write_private(a.dotenv_file, dotenv_block(handle, lambda n, v: ""))
            self.out.write(self.req_id + "\n")
        # github: already written to $GITHUB_ENV
        return EXIT_GRANTED

    def cancel(self) -> None:
        """Best effort: a request nobody waits for should not be approved into the void."""
        try:
            self.http(
                "DELETE",
                f"{self.base}/v1/requests/{urllib.parse.quote(self.req_id)}",
                token=self.req_token,
                timeout=10,
            )
        except (ApiError, Transient) as e:
            self.say(f"could not cancel {self.req_id}: {e}", always=True)

    # -------------------------------------------------------------- release

    def release(self) -> int:
        a = self.args
        if not a.id:
            raise UsageError("release needs a request ID (or $JIT_REQUEST_ID)")
        if not a.token:
            raise UsageError("release needs --request-token (or $JIT_REQUEST_TOKEN)")
        try:
            _, r = self.call(
                "DELETE",
                f"/v1/requests/{urllib.parse.quote(a.id)}",
                self.clock() + RELEASE_RETRY_SECONDS,
                "releasing",
                token=a.token,
            )
        except ApiError as e:
            if e.status in (404, 409, 410):  # already over: nothing left to release
                self.say(f"{a.id}: nothing to release ({e.message})")
                return EXIT_GRANTED
            raise ClientError(f"cannot release {a.id}: {e.message} ({e.code})") from None
        status = r.get("status") if isinstance(r, dict) else None
        self.say(f"{a.id} released ({status})")
        return EXIT_GRANTED

    # -------------------------------------------------------------- extend

    def extend(self) -> int:
        """More time for an active grant: 0 when extended or waiting for approval (202)."""
        a = self.args
        if not a.id:
            raise UsageError("extend needs a request ID (or $JIT_REQUEST_ID)")
        if not a.token:
            raise UsageError("extend needs --request-token (or $JIT_REQUEST_TOKEN)")
        path = f"/v1/requests/{urllib.parse.quote(a.id)}"
        deadline = self.clock() + RELEASE_RETRY_SECONDS
        body: dict[str, Any] = {"reason": a.reason or ""}
        if a.ttl is not None:
            body["ttl"] = a.ttl
        try:
            _, before = self.call("GET", path, deadline, "reading the request", token=a.token)
            status, r = self._extend_once(path, body, before, deadline)
        except ApiError as e:
            raise ClientError(f"cannot extend {a.id}: {e.message} ({e.code})") from None
        if status == 202:
            self.say(f"{a.id}: the extension waits for approval in Slack (expires {r.get('expires_at')} until then)")
        else:
            self.say(f"{a.id} extended: now expires {r.get('expires_at')}")
        return EXIT_GRANTED

    def _extend_once(self, path: str, body: dict[str, Any], before: Any, deadline: float) -> tuple[int, Any]:
        """POST the extension once: after a lost answer, the request's expiry says whether it
        landed (an extension is not repeated); asking again for a waiting one changes nothing."""
        delay = 1.0
        while True:
            try:
                return self.http("POST", self.base + path + "/extend", token=self.args.token, body=body)
            except Transient as e:
                if self.clock() >= deadline:
                    raise ClientError(f"extending: giving up after retries ({e})") from None
                self.say(f"extending: {e}; checking whether it landed in {delay:.0f}s", always=True)
                self.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
                _, now_ = self.call("GET", path, deadline, "reading the request", token=self.args.token)
                if (
                    isinstance(now_, dict)
                    and isinstance(before, dict)
                    and now_.get("expires_at") != before.get("expires_at")
                ):
                    return 200, now_


# ------------------------------------------------------------------------ CLI


_EXIT_CODES = """\
exit codes: 0 granted (or released), 10 denied, 11 timed out, 12 expired/revoked/cancelled
  before the credential was fetched, 2 usage error, 1 anything else"""

_REQUEST_EPILOG = f"""\
retries: network errors, HTTP 5xx, 408 and 429 are retried with the same request and
  Idempotency-Key (a retry never asks twice), backing off up to {MAX_BACKOFF_SECONDS:.0f} s between tries.
  Creating the request is retried for up to {CREATE_RETRY_SECONDS:.0f} s (CREATE_RETRY_SECONDS), or until
  --timeout if that comes first; then the client gives up with exit code 1. Its first failure
  prints one line on stderr, even with --quiet, naming the server and the deadline. Waiting
  for a decision is retried until --timeout.

variables: each credential field is exported as JIT_CREDENTIAL_<KEY> (JIT_CREDENTIAL holds
  the whole credential as JSON), never under the client's own JIT_TOKEN, JIT_URL, ...; plus
  JIT_REQUEST_ID, JIT_REQUEST_TOKEN (what release reads) and JIT_EXPIRES_AT.

{_EXIT_CODES}"""

_RELEASE_EPILOG = f"""\
retries: network errors, HTTP 5xx, 408 and 429 are retried for up to
  {RELEASE_RETRY_SECONDS:.0f} s (RELEASE_RETRY_SECONDS). A request that is already over exits 0.

{_EXIT_CODES}"""


def build_parser(env: Mapping[str, str], prog: str | None = None) -> argparse.ArgumentParser:
    """The client's command line; `prog` is how usage lines name it (default: how it was run)."""
    p = argparse.ArgumentParser(
        prog=prog,
        description="Ask jit for a just-in-time credential from a CI pipeline.",
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser(
        "request",
        help="ask for a credential and wait for approval",
        description="Ask for a credential, wait for approval, print or export it.",
        epilog=_REQUEST_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("action")
    r.add_argument("--reason", required=True)
    r.add_argument("--ttl", type=_duration_arg, help="how long the credential lives (15m, 2h)")
    r.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True)
    r.add_argument("--timeout", type=_duration_arg, default=30 * 60, help="give up after (default 30m)")
    r.add_argument("--format", choices=["json", "env", "github", "gitlab"], default="json")
    r.add_argument("--dotenv-file", default="jit.env", help="--format gitlab: where to write")
    r.add_argument("--url", default=env.get("JIT_URL"))
    auth = r.add_mutually_exclusive_group()
    auth.add_argument("--token", default=env.get("JIT_TOKEN"), help="pipeline token ($JIT_TOKEN)")
    auth.add_argument("--oidc", choices=["github", "gitlab"], help="authenticate with the CI's OIDC token")
    r.add_argument("--audience", default=env.get("JIT_AUDIENCE", "jit-bot"))
    r.add_argument("--oidc-env", default="JIT_ID_TOKEN", help="--oidc gitlab: the id_tokens variable")
    r.add_argument("--requested-by", help="who this is for (default: the CI actor)")
    r.add_argument("--idempotency-key", default=env.get("JIT_IDEMPOTENCY_KEY"))
    r.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    r.add_argument("--insecure-http", action="store_true", help="allow http:// to a non-local server")

    rel = sub.add_parser(
        "release",
        help="end a request: cancel it, or revoke its credential",
        description="End a request: cancel it while pending, or revoke its credential now.",
        epilog=_RELEASE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rel.add_argument("id", nargs="?", default=env.get("JIT_REQUEST_ID"))
    rel.add_argument("--url", default=env.get("JIT_URL"))
    rel.add_argument(
        "--token",
        "--request-token",
        dest="token",
        default=env.get("JIT_REQUEST_TOKEN"),
        help="the request's token ($JIT_REQUEST_TOKEN)",
    )
    rel.add_argument("--quiet", action="store_true")
    rel.add_argument("--insecure-http", action="store_true")

    ext = sub.add_parser(
        "extend",
        help="ask for more time on an active grant",
        description="Ask for more time on an active grant: applied at once within the action's policy, "
        "or after approval in Slack (exit 0 either way; the log says which).",
        epilog=_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ext.add_argument("id", nargs="?", default=env.get("JIT_REQUEST_ID"))
    ext.add_argument("--ttl", type=_duration_arg, help="time to add (15m, 1h; default: the action's default ttl)")
    ext.add_argument("--reason", default="", help="why the job needs more time")
    ext.add_argument("--url", default=env.get("JIT_URL"))
    ext.add_argument(
        "--token",
        "--request-token",
        dest="token",
        default=env.get("JIT_REQUEST_TOKEN"),
        help="the request's token ($JIT_REQUEST_TOKEN)",
    )
    ext.add_argument("--quiet", action="store_true")
    ext.add_argument("--insecure-http", action="store_true")
    return p


def _check_url(url: str | None, insecure: bool) -> None:
    if not url:
        raise UsageError("no server: pass --url or set JIT_URL")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"--url must be an http(s) URL, not {url!r}")
    if parts.scheme == "http" and not _is_loopback(parts.hostname) and not insecure:
        raise UsageError("--url must use https (tokens and credentials travel on it); --insecure-http to override")


def main(
    argv: list[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    prog: str | None = None,
) -> int:
    """Run the client; returns the exit code (see the module docstring). `prog` names the
    command in usage lines (`jit` when the server's `jit request` runs it)."""
    env = os.environ if env is None else env
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    parser = build_parser(env, prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse prints its own message
        return EXIT_USAGE if e.code not in (0, None) else 0

    restore = None
    if threading.current_thread() is threading.main_thread():
        # CI cancels a job with SIGTERM (after SIGINT): treat both as an interrupt.
        def _interrupt(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt

        try:
            restore = signal.signal(signal.SIGTERM, _interrupt)
        except (ValueError, OSError):
            restore = None
    try:
        _check_url(args.url, args.insecure_http)
        runner = Runner(args, env, out, err, sleep=sleep, clock=clock)
        if args.command == "extend":
            return runner.extend()
        return runner.request() if args.command == "request" else runner.release()
    except UsageError as e:
        print(f"jit: {e}", file=err)
        return EXIT_USAGE
    except ClientError as e:
        print(f"jit: {e}", file=err)
        return e.code
    except KeyboardInterrupt:
        print("jit: interrupted", file=err)
        return 130
    finally:
        if restore is not None:
            signal.signal(signal.SIGTERM, restore)


if __name__ == "__main__":
    sys.exit(main())
