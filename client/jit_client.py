#!/usr/bin/env python3
"""The pipeline side of jit: ask for a credential, wait for approval, print it, release it — or run
a command with it (`jit run ACTION -- COMMAND`: the credential in the command's environment only,
masked in its output, released the moment it exits, the session recorded).

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
import subprocess
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
#: The server's limit on `reason`.
MAX_REASON = 500

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


# ------------------------------------------------------------------------ jit run (pure parts)

#: Credential fields each backend's credential is also exported under, in COMMAND's environment.
BACKEND_ENV: dict[str, tuple[tuple[str, str], ...]] = {
    "postgres": (
        ("PGHOST", "host"),
        ("PGPORT", "port"),
        ("PGUSER", "username"),
        ("PGPASSWORD", "password"),
        ("PGDATABASE", "dbname"),
        ("DATABASE_URL", "dsn"),
    ),
    "redis_acl": (("REDIS_URL", "url"),),
    "token": (("JIT_TOKEN", "token"),),
}
MASK = b"***"
#: A credential value shorter than this is not masked: it cannot be secret material, and masking
#: every `1` or `on` would garble the output.
MIN_MASKED = 4
TRANSCRIPT_MAX_BYTES = 1024 * 1024
WARN_BEFORE_SECONDS = 5 * 60
#: Only grants longer than this get the "expires in 5 min" line.
WARN_WINDOWS_OVER_SECONDS = 10 * 60
STATUS_POLL_SECONDS = 5.0
#: While the server cannot be reached: how long after expires_at (by this runner's clock) the
#: grant is taken to have expired.
EXPIRY_SLACK_SECONDS = 2.0
SESSION_RETRY_SECONDS = 60.0
#: The largest session body the server reads (its MAX_SESSION_BODY), as JSON.
SESSION_BODY_MAX = 2 * 1024 * 1024 + 64 * 1024


def guess_backend(credential: Mapping[str, Any]) -> str | None:
    """For a server that does not name the backend: what the credential looks like."""
    if str(credential.get("dsn", "")).startswith(("postgres://", "postgresql://")):
        return "postgres"
    if str(credential.get("url", "")).startswith(("redis://", "rediss://")):
        return "redis_acl"
    if isinstance(credential.get("token"), str) and credential.get("token_type") == "Bearer":
        return "token"
    return None


def child_environment(
    env: Mapping[str, str],
    credential: Mapping[str, Any],
    backend: str | None,
    request_id: str,
    expires_at: str | None,
    drop: Iterable[str] = (),
) -> dict[str, str]:
    """COMMAND's environment: the parent's, without the client's own secrets (the pipeline's
    JIT_TOKEN, OIDC token, request token: least privilege) or an earlier credential's variables,
    plus this credential: JIT_CREDENTIAL (JSON), JIT_CREDENTIAL_<KEY>, the backend's own
    variables (BACKEND_ENV), JIT_REQUEST_ID and JIT_EXPIRES_AT."""
    dropped = set(CLIENT_ENV) | set(drop)
    out = {
        k: v for k, v in env.items() if k not in dropped and k != CREDENTIAL_VAR and not k.startswith(CREDENTIAL_PREFIX)
    }
    out.update(credential_vars(request_id, credential, expires_at))
    for name, key in BACKEND_ENV.get(backend or "", ()):
        if credential.get(key) not in (None, ""):
            out[name] = value_text(credential[key])
    return out


def masked_forms(values: Iterable[str]) -> list[bytes]:
    """Every form a secret may take in output: as is, URL-encoded (`%40`, and `+` for spaces)
    and JSON-escaped; longest first."""
    forms: set[bytes] = set()
    for value in values:
        if len(value) < MIN_MASKED:
            continue
        for form in (
            value,
            urllib.parse.quote(value, safe=""),
            urllib.parse.quote_plus(value, safe=""),
            json.dumps(value, ensure_ascii=False)[1:-1],
            json.dumps(value)[1:-1],
        ):
            forms.add(form.encode("utf-8", "surrogateescape"))
    return sorted(forms, key=lambda f: (-len(f), f))


class Masker:
    """Replaces every secret in a byte stream with `***`, also one split across reads: it holds
    back a tail that could still become (or extend to) a secret until the next read says. The
    result is the same however the stream is cut: leftmost match first, the longest secret there."""

    def __init__(self, secrets_: Iterable[bytes]) -> None:
        # longest first: at any position the regex takes the longest secret that is there
        self.secrets = sorted({s for s in secrets_ if s}, key=lambda s: (-len(s), s))
        self.pattern = re.compile(b"|".join(re.escape(s) for s in self.secrets)) if self.secrets else None
        self.longest = max((len(s) for s in self.secrets), default=0)
        self.held = b""

    def _open_prefix(self, tail: bytes) -> bool:
        """Could more bytes turn `tail` into a (longer) secret?"""
        return any(len(s) > len(tail) and s.startswith(tail) for s in self.secrets)

    def feed(self, data: bytes, final: bool = False) -> bytes:
        buf = self.held + data
        if self.pattern is None:
            self.held = b""
            return buf
        # Positions where a secret may start but is not complete yet: nothing from the first of
        # them on is decided (a match there, or one overlapping it, could still grow).
        opens = (
            []
            if final
            else [j for j in range(max(0, len(buf) - self.longest + 1), len(buf)) if self._open_prefix(buf[j:])]
        )
        out = bytearray()
        pos = 0
        while True:
            undecided = next((j for j in opens if j >= pos), len(buf))
            m = self.pattern.search(buf, pos)
            if m is None or m.start() >= undecided:
                out += buf[pos:undecided]
                self.held = buf[undecided:]
                return bytes(out)
            out += buf[pos : m.start()] + MASK
            pos = m.end()

    def flush(self) -> bytes:
        return self.feed(b"", final=True)


class Transcript:
    """The masked output of both streams, in the order it came, keeping the last `cap` bytes;
    and the size of the whole output."""

    def __init__(self, cap: int = TRANSCRIPT_MAX_BYTES) -> None:
        self.cap = cap
        self.data = bytearray()
        self.truncated = False
        self.output_bytes = 0
        self.output_lines = 0
        self.lock = threading.Lock()

    def count(self, raw: bytes) -> None:
        with self.lock:
            self.output_bytes += len(raw)
            self.output_lines += raw.count(b"\n")

    def add(self, masked: bytes) -> None:
        with self.lock:
            self.data += masked
            if len(self.data) > self.cap:
                del self.data[: len(self.data) - self.cap]
                self.truncated = True

    def text(self) -> str:
        """The transcript as sent: UTF-8 (a character cut by the cap is replaced)."""
        with self.lock:
            return bytes(self.data).decode("utf-8", "replace")


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def rfc3339_now(t: float | None = None) -> str:
    dt = datetime.fromtimestamp(time.time() if t is None else t, timezone.utc)  # noqa: UP017 - 3.10
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def exit_status(returncode: int) -> int:
    """A child's exit code as a shell reports it: 128 + N for a signal."""
    return 128 - returncode if returncode < 0 else returncode


def _duration(seconds: float) -> str:
    return _span(max(0, int(seconds)))


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
        deadline = self.create()
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
        code = self.await_grant(deadline)
        if code != EXIT_GRANTED:
            return code
        code, data = self.fetch_credential(deadline)
        if data is None:
            return code
        self.emit(data["credential"], data.get("expires_at"))
        return EXIT_GRANTED

    def create(self) -> float:
        """Ask (`POST /v1/requests`, retried with one Idempotency-Key); returns the --timeout
        deadline. Sets `req_id` and `req_token`."""
        a = self.args
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
        context = {**ci_context(self.env), **dict(getattr(a, "context", None) or [])}
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
        self.created = created
        return deadline

    def await_grant(self, deadline: float) -> int:
        """Wait for the decision: EXIT_GRANTED once active, else the exit code (explained)."""
        try:
            final = self.wait(self.created, deadline)
        except KeyboardInterrupt:
            self.say("interrupted: cancelling the request", always=True)
            self.cancel()
            return 130
        code = exit_code_for_status(final["status"])
        if code == EXIT_GRANTED:
            return code
        return self.explain(final, code)

    def run(self) -> int:
        """`jit run ACTION -- COMMAND`: ask, wait, run COMMAND with the credential (CommandSession)."""
        a = self.args
        if not a.cmd:
            raise UsageError("run needs a command after --: jit run ACTION [options] -- COMMAND [ARGS...]")
        if not a.reason:
            # the program only: its arguments may hold what the shell expanded from CI secrets
            a.reason = f"jit run {os.path.basename(a.cmd[0])}"[:MAX_REASON]
        deadline = self.create()
        code = self.await_grant(deadline)
        if code != EXIT_GRANTED:
            return code
        try:
            code, data = self.fetch_credential(deadline)
            if data is None:
                return code
            return CommandSession(self, data).run()
        except KeyboardInterrupt:  # cancelled around the command (it forwards signals while it runs)
            self.say("interrupted: releasing the grant", always=True)
            try:
                self.release_now(self.req_id, self.req_token)
            except ClientError as e:
                self.say(f"could not release {self.req_id}: {e}", always=True)
            return 130

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

    def fetch_credential(self, deadline: float) -> tuple[int, Mapping[str, Any] | None]:
        """`GET …/credential`: (EXIT_GRANTED, the answer) or (exit code, None) when it is gone."""
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
                    return EXIT_GONE, None
                raise ClientError(f"cannot fetch the credential: {e.message} ({e.code})") from None
        credential = data.get("credential") if isinstance(data, dict) else None
        if not isinstance(credential, dict):
            raise ClientError("the server's answer has no credential")
        return EXIT_GRANTED, data

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
        self.release_now(a.id, a.token)
        return EXIT_GRANTED

    def release_now(self, request_id: str, request_token: str) -> None:
        """`DELETE` the request (retried for RELEASE_RETRY_SECONDS); one that is over already is fine."""
        try:
            _, r = self.call(
                "DELETE",
                f"/v1/requests/{urllib.parse.quote(request_id)}",
                self.clock() + RELEASE_RETRY_SECONDS,
                "releasing",
                token=request_token,
            )
        except ApiError as e:
            if e.status in (404, 409, 410):  # already over: nothing left to release
                self.say(f"{request_id}: nothing to release ({e.message})")
                return
            raise ClientError(f"cannot release {request_id}: {e.message} ({e.code})") from None
        status = r.get("status") if isinstance(r, dict) else None
        self.say(f"{request_id} released ({status})")

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

# ------------------------------------------------------------------------ jit run


class CommandSession:
    """`jit run`'s COMMAND: run with the credential in its environment only, its output streamed
    through masked, stopped when the grant ends, the grant released the moment it exits, and the
    session record sent to the server."""

    def __init__(self, runner: Runner, answer: Mapping[str, Any]) -> None:
        self.runner = runner
        self.args = runner.args
        self.credential: Mapping[str, Any] = answer["credential"]
        self.backend = answer.get("backend") or guess_backend(self.credential)
        self.expires_text = answer.get("expires_at")
        self.expires_at = parse_time(self.expires_text)
        self.issued_at: datetime | None = None
        self.transcript = Transcript()
        forms = masked_forms([*secret_values(self.credential), runner.req_token])
        self.maskers = {"out": Masker(forms), "err": Masker(forms)}
        self.write_lock = threading.Lock()
        self.done = threading.Event()
        self.grant_over: str | None = None
        self.warned_for: datetime | None = None
        self.interrupted: int | None = None
        self.child: subprocess.Popen[bytes] | None = None

    # -------------------------------------------------------------- output

    def _write(self, which: str, data: bytes) -> None:
        if not data:
            return
        stream = self.runner.out if which == "out" else self.runner.err
        with self.write_lock:
            self.transcript.add(data)
            raw = getattr(stream, "buffer", None)
            if raw is not None:
                stream.flush()
                raw.write(data)
                raw.flush()
            else:
                stream.write(data.decode("utf-8", "replace"))
                stream.flush()

    def _pump(self, which: str, fd: int) -> None:
        masker = self.maskers[which]
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            self.transcript.count(chunk)
            self._write(which, masker.feed(chunk))
        self._write(which, masker.flush())

    # -------------------------------------------------------------- the grant while COMMAND runs

    def _watch(self) -> None:
        """Poll the request (cheap GETs): note its end, a moved expires_at, the 5-minute warning."""
        r = self.runner
        path = f"{r.base}/v1/requests/{urllib.parse.quote(r.req_id)}"
        while not self.done.is_set():
            try:
                _, view = r.http("GET", path, token=r.req_token, timeout=10)
            except (ApiError, Transient):
                view = None
            if isinstance(view, dict):
                status = view.get("status")
                self.expires_at = parse_time(view.get("expires_at")) or self.expires_at
                self.issued_at = parse_time(view.get("issued_at")) or self.issued_at
                if status != "active":
                    if status == "revoked":
                        by = f" by {view['revoked_by']}" if view.get("revoked_by") else ""
                        self._over(f"the grant was revoked{by}")
                    else:
                        self._over("the grant expired" if status == "expired" else f"the grant is {status}")
                    return
            now = datetime.now(timezone.utc)  # noqa: UP017 - 3.10
            if self.expires_at is not None:
                # the server says when a grant ends; this runner's clock only when it cannot be asked
                late = now.timestamp() > self.expires_at.timestamp() + EXPIRY_SLACK_SECONDS
                if view is None and late:
                    self._over(f"the grant expired at {self.expires_at:%Y-%m-%dT%H:%M:%SZ}")
                    return
                self._maybe_warn(now)
            self.done.wait(self._next_poll(now))

    def _over(self, why: str) -> None:
        if not self.done.is_set():
            self.grant_over = why

    def _warn_at(self) -> datetime | None:
        if self.expires_at is None:
            return None
        issued = self.issued_at or self.expires_at
        if (self.expires_at - issued).total_seconds() <= WARN_WINDOWS_OVER_SECONDS:
            return None
        return self.expires_at - timedelta(seconds=WARN_BEFORE_SECONDS)

    def _maybe_warn(self, now: datetime) -> None:
        at = self._warn_at()
        # once per expires_at: an extension that moves it later arms the warning again
        if at is not None and at <= now < self.expires_at and self.warned_for != self.expires_at:
            self.warned_for = self.expires_at
            left = max(1, round((self.expires_at - now).total_seconds() / 60))
            self.runner.say(f"access expires in {left} min", always=True)

    def _next_poll(self, now: datetime) -> float:
        at = self._warn_at()
        if at is not None and at > now:
            return max(0.05, min(STATUS_POLL_SECONDS, (at - now).total_seconds()))
        return STATUS_POLL_SECONDS

    # -------------------------------------------------------------- signals

    def _signal_child(self, signum: int) -> None:
        if self.child is None or self.child.returncode is not None:
            return
        try:
            os.killpg(self.child.pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def _forward(self, signum: int, frame: Any) -> None:
        self.interrupted = signum
        self._signal_child(signum)

    # -------------------------------------------------------------- the run

    def run(self) -> int:
        r, a = self.runner, self.args
        drop = [a.oidc_env] if getattr(a, "oidc_env", None) else []
        if getattr(a, "oidc", None) == "github":  # what mints the job's OIDC tokens: not the command's
            drop += ["ACTIONS_ID_TOKEN_REQUEST_TOKEN", "ACTIONS_ID_TOKEN_REQUEST_URL"]
        env = child_environment(r.env, self.credential, self.backend, r.req_id, self.expires_text, drop)
        started = time.time()
        try:
            # its own session (and process group): a stop reaches whatever it started too
            self.child = subprocess.Popen(
                a.cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
            )
        except OSError as e:
            r.say(f"cannot run {a.cmd[0]!r}: {e.strerror or e}", always=True)
            self._release()
            self._finish(started, 127, "command")
            return 127
        r.say(f"running {os.path.basename(a.cmd[0])} with {a.action}'s credential")
        readers = [
            threading.Thread(target=self._pump, args=(w, p.fileno()), daemon=True)
            for w, p in (("out", self.child.stdout), ("err", self.child.stderr))
        ]
        watcher = threading.Thread(target=self._watch, daemon=True)
        for t in (*readers, watcher):
            t.start()
        previous = self._install_forwarding()
        try:
            returncode = self._wait()
        finally:
            self.done.set()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        code = exit_status(returncode)
        ended_by = "command"
        if self.grant_over and a.kill_on_expiry:
            ended_by = "grant_end"
        elif self.interrupted:
            ended_by = "interrupt"
        self._release()
        for t, pipe in zip(readers, (self.child.stdout, self.child.stderr), strict=True):
            t.join(5)  # a grandchild holding the pipes open does not hold up the end
            if not t.is_alive():  # never close a descriptor a reader may still use
                pipe.close()
        self._finish(started, code, ended_by)
        return code

    def _install_forwarding(self) -> dict[int, Any]:
        previous: dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return previous
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[signum] = signal.signal(signum, self._forward)
            except (ValueError, OSError):
                pass
        return previous

    def _wait(self) -> int:
        child, a = self.child, self.args
        assert child is not None
        kill_at: float | None = None
        told = False
        while True:
            try:
                return child.wait(timeout=0.2)
            except subprocess.TimeoutExpired:
                pass
            if self.grant_over and not told:
                told = True
                if a.kill_on_expiry:
                    self.runner.say(
                        f"{self.grant_over}: stopping the command (SIGTERM, then SIGKILL after {_span(a.grace)})",
                        always=True,
                    )
                    self._signal_child(signal.SIGTERM)
                    kill_at = time.monotonic() + a.grace
                else:
                    self.runner.say(
                        f"{self.grant_over}: the command keeps running (--no-kill-on-expiry), "
                        "but its credential no longer works",
                        always=True,
                    )
            if kill_at is not None and time.monotonic() >= kill_at:
                self.runner.say("the command did not stop: SIGKILL", always=True)
                self._signal_child(signal.SIGKILL)
                kill_at = None

    def _release(self) -> None:
        r = self.runner
        try:
            r.release_now(r.req_id, r.req_token)
        except ClientError as e:
            r.say(f"could not release {r.req_id}: {e}; it ends at its expiry", always=True)

    def _finish(self, started: float, code: int, ended_by: str) -> None:
        """Send the session record (retried like a release); a refusal is reported, not fatal."""
        r = self.runner
        ended = time.time()
        text = self.transcript.text()
        body: dict[str, Any] = {
            "started_at": rfc3339_now(started),
            "ended_at": rfc3339_now(ended),
            "exit_code": code,
            "duration_ms": max(0, int((ended - started) * 1000)),
            "output_bytes": self.transcript.output_bytes,
            "output_lines": self.transcript.output_lines,
            "transcript": text,
            "transcript_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "transcript_truncated": self.transcript.truncated,
            "ended_by": ended_by,
        }
        runner_name = r.env.get("RUNNER_NAME") or r.env.get("CI_RUNNER_DESCRIPTION") or r.env.get("CI_RUNNER_ID")
        if runner_name:
            body["runner"] = runner_name[:200]
        # JSON escapes (colour codes, non-ASCII) can make the body larger than the server reads:
        # keep a shorter tail then
        while len(json.dumps(body)) > SESSION_BODY_MAX and body["transcript"]:
            body["transcript"] = body["transcript"][len(body["transcript"]) // 4 + 1 :]
            body["transcript_sha256"] = hashlib.sha256(body["transcript"].encode("utf-8")).hexdigest()
            body["transcript_truncated"] = True
        try:
            r.call(
                "POST",
                f"/v1/requests/{urllib.parse.quote(r.req_id)}/session",
                r.clock() + SESSION_RETRY_SECONDS,
                "sending the session record",
                token=r.req_token,
                body=body,
            )
            digest = body["transcript_sha256"][:12]
            r.say(f"session recorded: exit {code}, {_duration(ended - started)}, transcript sha256 {digest}")
        except ApiError as e:
            if e.code == "session_recorded":  # a retry after an answer that was lost: it is stored
                r.say("session recorded")
            else:
                r.say(f"the session record was not stored: {e}", always=True)
        except ClientError as e:
            r.say(f"the session record was not stored: {e}", always=True)


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


_RUN_EPILOG = f"""\
COMMAND's environment: the parent's, minus the client's own secrets (JIT_TOKEN, JIT_ID_TOKEN,
  JIT_REQUEST_TOKEN, ...), plus JIT_CREDENTIAL (JSON), JIT_CREDENTIAL_<KEY>, JIT_REQUEST_ID,
  JIT_EXPIRES_AT and, by backend: postgres PGHOST PGPORT PGUSER PGPASSWORD PGDATABASE
  DATABASE_URL; redis_acl REDIS_URL; token JIT_TOKEN (the issued token, not the pipeline's).

output: COMMAND's stdout and stderr pass through with every credential value (and its
  URL-encoded and JSON-escaped forms) replaced by ***. SIGINT and SIGTERM are forwarded.
  When the grant is revoked or expires, COMMAND gets SIGTERM, then SIGKILL after --grace.

exit code: COMMAND's (128+N when a signal N ended it); before COMMAND runs, jit's own:
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
    r.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True)
    r.add_argument("--format", choices=["json", "env", "github", "gitlab"], default="json")
    r.add_argument("--dotenv-file", default="jit.env", help="--format gitlab: where to write")
    _asking_options(r, env)

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
    run = sub.add_parser(
        "run",
        help="ask, wait, and run a command with the credential in its environment only",
        description="Ask for a credential, wait for approval, run COMMAND with the credential in its "
        "environment (never printed), release the grant the moment COMMAND exits, and record the session.",
        usage="%(prog)s ACTION [options] -- COMMAND [ARGS...]",
        epilog=_RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("action")
    run.add_argument("--reason", help="why (default: `jit run PROGRAM`, without its arguments)")
    run.add_argument("--grace", type=_duration_arg, default=10, help="SIGTERM → SIGKILL when the grant ends (10s)")
    run.add_argument(
        "--kill-on-expiry",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="stop COMMAND when the grant is revoked or expires (default); --no-kill-on-expiry lets it run on",
    )
    _asking_options(run, env)
    return p


def _context_arg(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--context takes KEY=VALUE, not {text!r}")
    return key, value


def _asking_options(r: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """What `request` and `run` share: how to ask, who asks, and how long to wait."""
    r.add_argument("--ttl", type=_duration_arg, help="how long the credential lives (15m, 2h)")
    r.add_argument("--timeout", type=_duration_arg, default=30 * 60, help="give up after (default 30m)")
    r.add_argument(
        "--context",
        type=_context_arg,
        action="append",
        metavar="KEY=VALUE",
        help="shown to approvers (repeatable); verified OIDC claims win",
    )
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
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if argv[:1] == ["run"] and "--" in argv:  # everything after the first `--` is COMMAND, untouched
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1 :]
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse prints its own message
        return EXIT_USAGE if e.code not in (0, None) else 0
    args.cmd = command

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
        if args.command == "run":
            return runner.run()
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
