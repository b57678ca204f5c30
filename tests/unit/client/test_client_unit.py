"""The pipeline client's pure parts: durations, idempotency keys, output formats, exit codes."""

from __future__ import annotations

import io
import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest

import jit_client as client
from jit_client import (
    EXIT_DENIED,
    EXIT_ERROR,
    EXIT_GONE,
    EXIT_GRANTED,
    EXIT_TIMED_OUT,
    EXIT_USAGE,
    ApiError,
    Transient,
    credential_vars,
    derive_idempotency_key,
    exit_code_for_status,
    format_env,
    format_json,
    github_env_block,
    parse_duration,
    write_github,
)

GITHUB_ENV_VARS = {
    "GITHUB_ACTIONS": "true",
    "GITHUB_REPOSITORY": "acme/deploy",
    "GITHUB_RUN_ID": "22259804324",
    "GITHUB_RUN_ATTEMPT": "1",
    "GITHUB_JOB": "migrate",
    "GITHUB_REF": "refs/heads/main",
    "GITHUB_SHA": "c040cae0f0dc81641728557b80f09cfa23b83fe5",
    "GITHUB_SERVER_URL": "https://github.com",
    "GITHUB_ACTOR": "octocat",
}
GITLAB_ENV_VARS = {
    "GITLAB_CI": "true",
    "CI_PROJECT_PATH": "acme/infra",
    "CI_JOB_ID": "8222997048",
    "CI_COMMIT_REF_NAME": "main",
    "CI_COMMIT_SHA": "8fe1b322a576d59fe6257052a4107df7dc1b8c78",
    "CI_PIPELINE_URL": "https://gitlab.example.com/acme/infra/-/pipelines/1519139981",
    "CI_ENVIRONMENT_NAME": "production",
}


# ------------------------------------------------------------------ durations


@pytest.mark.parametrize(
    "text, seconds",
    [("90s", 90), ("15m", 900), ("2h", 7200), ("1d", 86400), ("300", 300), (" 5m ", 300), (45, 45)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "0m", "-5m", "15x", "1.5h", "m", "1h30m", True])
def test_bad_durations(text):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_a_bad_duration_on_the_command_line_is_a_usage_error(capsys):
    code = client.main(["request", "db", "--reason", "x", "--ttl", "soon"], env={"JIT_URL": "https://j"})
    assert code == EXIT_USAGE
    assert "soon" in capsys.readouterr().err


# ------------------------------------------------------------------ idempotency keys


def test_github_key_is_stable_per_job_attempt_and_action():
    key, derived = derive_idempotency_key("deploy-db", GITHUB_ENV_VARS)
    assert derived and key.startswith("jit-gh-")
    assert derive_idempotency_key("deploy-db", dict(GITHUB_ENV_VARS))[0] == key
    for change in (
        {"GITHUB_RUN_ATTEMPT": "2"},
        {"GITHUB_JOB": "other"},
        {"GITHUB_RUN_ID": "1"},
        {"GITHUB_REPOSITORY": "acme/other"},
    ):
        assert derive_idempotency_key("deploy-db", {**GITHUB_ENV_VARS, **change})[0] != key
    assert derive_idempotency_key("read-db", GITHUB_ENV_VARS)[0] != key


def test_gitlab_key_is_stable_per_job_and_action():
    key, derived = derive_idempotency_key("deploy-db", GITLAB_ENV_VARS)
    assert derived and key.startswith("jit-gl-")
    assert derive_idempotency_key("deploy-db", GITLAB_ENV_VARS)[0] == key
    assert derive_idempotency_key("deploy-db", {**GITLAB_ENV_VARS, "CI_JOB_ID": "9"})[0] != key
    assert derive_idempotency_key("read-db", GITLAB_ENV_VARS)[0] != key


def test_outside_ci_the_key_is_random():
    a, derived = derive_idempotency_key("deploy-db", {})
    b, _ = derive_idempotency_key("deploy-db", {})
    assert not derived and a != b and a.startswith("jit-rnd-")


def test_keys_are_header_safe():
    key, _ = derive_idempotency_key("déploiement", {**GITHUB_ENV_VARS, "GITHUB_JOB": "a b\n"})
    assert key.isascii() and " " not in key and "\n" not in key and len(key) <= 64


def test_context_from_ci_variables():
    assert client.ci_context(GITHUB_ENV_VARS) == {
        "repository": "acme/deploy",
        "ref": "refs/heads/main",
        "commit": "c040cae0f0dc81641728557b80f09cfa23b83fe5",
        "run_url": "https://github.com/acme/deploy/actions/runs/22259804324",
    }
    assert client.ci_context(GITLAB_ENV_VARS) == {
        "repository": "acme/infra",
        "ref": "main",
        "commit": "8fe1b322a576d59fe6257052a4107df7dc1b8c78",
        "run_url": "https://gitlab.example.com/acme/infra/-/pipelines/1519139981",
        "environment": "production",
    }
    assert client.ci_context({}) == {}


# ------------------------------------------------------------------ output formats

CREDENTIAL = {
    "username": "jit_deploy_7f3a",
    "password": 'p@ss w\'rd $HOME `id` "q"',
    "port": 5432,
    "ssl": True,
    "ca_cert": "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----",
    "db-host": "db.internal",
}
EXPIRES = "2026-11-25T21:40:00.000Z"


def parse_github_env(text: str) -> dict[str, str]:
    """Read a $GITHUB_ENV file the way the Actions runner does."""
    out, lines, i = {}, text.split("\n"), 0
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line:
            continue
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            body = []
            while lines[i] != delimiter:
                body.append(lines[i])
                i += 1
            i += 1
            out[name] = "\n".join(body)
        else:
            name, value = line.split("=", 1)
            out[name] = value
    return out


def test_variables_are_named_after_the_credential_keys():
    names = [n for n, _ in credential_vars("req_1", CREDENTIAL, EXPIRES)]
    assert names == [
        "JIT_CREDENTIAL_USERNAME",
        "JIT_CREDENTIAL_PASSWORD",
        "JIT_CREDENTIAL_PORT",
        "JIT_CREDENTIAL_SSL",
        "JIT_CREDENTIAL_CA_CERT",
        "JIT_CREDENTIAL_DB_HOST",
        "JIT_CREDENTIAL",
        "JIT_REQUEST_ID",
        "JIT_EXPIRES_AT",
    ]
    values = dict(credential_vars("req_1", CREDENTIAL, EXPIRES))
    assert values["JIT_CREDENTIAL_PORT"] == "5432" and values["JIT_CREDENTIAL_SSL"] == "true"
    assert json.loads(values["JIT_CREDENTIAL"]) == CREDENTIAL  # all of it, names as sent


def test_json_format():
    body = json.loads(format_json("req_1", CREDENTIAL, EXPIRES))
    assert body == {"id": "req_1", "expires_at": EXPIRES, "credential": CREDENTIAL}


def test_env_format_survives_the_shell():
    script = format_env(credential_vars("req_1", CREDENTIAL, EXPIRES))
    assert script.startswith("export JIT_CREDENTIAL_USERNAME=jit_deploy_7f3a\n")
    assert f"export JIT_CREDENTIAL_PASSWORD={shlex.quote(CREDENTIAL['password'])}\n" in script
    shown = subprocess.run(
        [
            "sh",
            "-c",
            script + 'printf "%s|%s|%s" "$JIT_CREDENTIAL_PASSWORD" "$JIT_CREDENTIAL_CA_CERT" "$JIT_REQUEST_ID"',
        ],
        capture_output=True,
        text=True,
        check=True,
        env={"HOME": "/nonexistent", "PATH": "/usr/bin:/bin"},
    ).stdout
    assert shown == f"{CREDENTIAL['password']}|{CREDENTIAL['ca_cert']}|req_1"


def test_github_format_masks_everything_first_then_writes_github_env(tmp_path):
    env_file = tmp_path / "github_env"
    env_file.write_text("EARLIER=kept\n")
    out = io.StringIO()

    write_github(
        credential_vars("req_1", CREDENTIAL, EXPIRES),
        client.secret_values(CREDENTIAL),
        str(env_file),
        out,
    )

    masks = out.getvalue().splitlines()
    assert all(line.startswith("::add-mask::") for line in masks)
    masked = {line.removeprefix("::add-mask::") for line in masks}
    for key in ("username", "password", "db-host"):
        assert CREDENTIAL[key] in masked
    assert {"5432", "true"} <= masked
    assert json.dumps(CREDENTIAL, separators=(",", ":")) in masked  # JIT_CREDENTIAL, all of it
    # A multi-line secret is masked line by line (the runner matches one log line at a time).
    for line in CREDENTIAL["ca_cert"].splitlines():
        assert line in masked

    written = parse_github_env(env_file.read_text())
    assert written["EARLIER"] == "kept"
    assert written["JIT_CREDENTIAL_PASSWORD"] == CREDENTIAL["password"]
    assert written["JIT_CREDENTIAL_CA_CERT"] == CREDENTIAL["ca_cert"]
    assert written["JIT_REQUEST_ID"] == "req_1"
    assert written["JIT_EXPIRES_AT"] == EXPIRES
    assert "ghadelimiter_" in env_file.read_text()


def test_github_mask_escapes_workflow_command_data():
    assert client.github_masks(["100%done", "100%done", " "]) == "::add-mask::100%25done\n"


def test_github_heredoc_delimiter_never_appears_in_the_value(monkeypatch):
    ids = iter(["same", "same", "other"])
    monkeypatch.setattr(client.uuid, "uuid4", lambda: next(ids))
    block = github_env_block([("JIT_X", "a\nghadelimiter_same\nb")])
    assert block == "JIT_X<<ghadelimiter_other\na\nghadelimiter_same\nb\nghadelimiter_other\n"


def test_gitlab_dotenv_puts_multi_line_values_in_files(tmp_path):
    def side_file(name, value):
        path = tmp_path / f"{name.lower()}.secret"
        path.write_text(value)
        return str(path)

    # --format gitlab exports the fields, not the whole JSON: dotenv reports are small (5 KB)
    text = client.dotenv_block(credential_vars("req_1", CREDENTIAL, EXPIRES, whole=False), side_file)
    lines = text.splitlines()
    assert not any(line.startswith("JIT_CREDENTIAL=") for line in lines)
    assert f"JIT_CREDENTIAL_PASSWORD={CREDENTIAL['password']}" in lines
    assert f"JIT_CREDENTIAL_CA_CERT_FILE={tmp_path / 'jit_credential_ca_cert.secret'}" in lines
    assert (tmp_path / "jit_credential_ca_cert.secret").read_text() == CREDENTIAL["ca_cert"]
    assert all(line and "=" in line for line in lines)


# ------------------------------------------------------------------ exit codes


@pytest.mark.parametrize(
    "status, code",
    [
        ("active", EXIT_GRANTED),
        ("denied", EXIT_DENIED),
        ("timed_out", EXIT_TIMED_OUT),
        ("expired", EXIT_GONE),
        ("revoked", EXIT_GONE),
        ("cancelled", EXIT_GONE),
        ("failed", EXIT_ERROR),
        ("something_new", EXIT_ERROR),
        ("pending", None),
        ("approved", None),
    ],
)
def test_exit_codes(status, code):
    assert exit_code_for_status(status) == code


# ------------------------------------------------------------------ the loop, against a fake server


class FakeServer:
    """Answers the client's HTTP calls from a script; records what it was sent."""

    def __init__(self, script):
        self.script = list(script)
        self.calls = []

    def __call__(self, method, url, **kw):
        self.calls.append((method, url, kw))
        answer = self.script.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s


def run(argv, script, env=None, advance_per_call=0.0):
    clock = FakeClock()
    server = FakeServer(script)

    def http(method, url, **kw):
        clock.t += advance_per_call
        return server(method, url, **kw)

    parser = client.build_parser(env or {})
    args = parser.parse_args(argv)
    out, err = io.StringIO(), io.StringIO()
    runner = client.Runner(args, env or {}, out, err, sleep=clock.sleep, clock=clock, http=http)
    code = runner.request()
    return code, server, out.getvalue(), err.getvalue()


CREATED = {
    "id": "req_1",
    "status": "pending",
    "request_token": "rt_secret",
    "action": "deploy-db",
    "approvals": {"count": 0, "required": 2, "by": []},
    "expires_at": None,
}
BASE = [
    "request",
    "deploy-db",
    "--reason",
    "migrate",
    "--url",
    "https://jit.example",
    "--token",
    "pt",
]


def status(s, count=0, **extra):
    return (200, {**CREATED, "status": s, "approvals": {"count": count, "required": 2}, **extra})


def test_retries_reuse_the_same_request_and_key():
    code, server, out, err = run(
        BASE + ["--format", "json"],
        [
            Transient("HTTP 502"),
            (201, CREATED),
            Transient("ConnectionResetError"),
            status("pending", 1),
            status("active", 2),
            (200, {"credential": {"password": "s3cret"}, "expires_at": EXPIRES}),
        ],
        env=GITHUB_ENV_VARS,
    )
    assert code == EXIT_GRANTED
    posts = [c for c in server.calls if c[0] == "POST"]
    assert len(posts) == 2 and posts[0][2]["headers"] == posts[1][2]["headers"]
    assert posts[0][2]["headers"]["Idempotency-Key"].startswith("jit-gh-")
    assert all(c[2]["token"] == "rt_secret" for c in server.calls if c[0] == "GET")
    assert "approvals 1 of 2" in err and "s3cret" not in err
    assert json.loads(out)["credential"] == {"password": "s3cret"}


def test_denied_says_who_and_why():
    code, _, out, err = run(
        BASE, [(201, CREATED), status("denied", decided_by="U123", deny_reason="not during freeze")]
    )
    assert code == EXIT_DENIED
    assert "U123" in err and "not during freeze" in err and out == ""


def test_client_timeout_cancels_the_request():
    code, server, _, err = run(
        BASE + ["--timeout", "2m"],
        [
            (201, CREATED),
            status("pending"),
            status("pending"),
            (200, {**CREATED, "status": "cancelled"}),
        ],
        advance_per_call=60,
    )
    assert code == EXIT_TIMED_OUT
    assert server.calls[-1][0] == "DELETE"


def test_refused_on_create_prints_the_servers_message(monkeypatch, capsys):
    refusal = ApiError(403, "action_not_allowed", "This pipeline may not request that action.")
    monkeypatch.setattr(client, "http_json", FakeServer([refusal]))
    assert client.main(BASE, env={}) == EXIT_ERROR
    assert "This pipeline may not request that action." in capsys.readouterr().err


def test_usage_errors(capsys):
    assert client.main(["request", "db", "--reason", "x"], env={}) == EXIT_USAGE  # no --url
    no_token = ["request", "db", "--reason", "x", "--url", "https://jit.example"]
    assert client.main(no_token, env={}) == EXIT_USAGE
    plain_http = ["request", "db", "--reason", "x", "--url", "http://jit.example", "--token", "t"]
    assert client.main(plain_http, env={}) == EXIT_USAGE
    assert client.main(BASE + ["--format", "github"], env={}) == EXIT_USAGE  # no $GITHUB_ENV
    assert client.main(BASE[:-2] + ["--oidc", "gitlab"], env={}) == EXIT_USAGE
    assert client.main(["release", "--url", "https://jit.example"], env={}) == EXIT_USAGE


def test_github_format_hands_over_the_request_then_the_credential(tmp_path):
    env_file = tmp_path / "github_env"
    env = {**GITHUB_ENV_VARS, "GITHUB_ENV": str(env_file)}
    code, _, out, err = run(
        BASE + ["--format", "github"],
        [
            (201, CREATED),
            status("active", 2),
            (200, {"credential": {"password": "s3cret", "user": "u1"}, "expires_at": EXPIRES}),
        ],
        env=env,
    )
    assert code == EXIT_GRANTED
    lines = out.splitlines()
    assert lines[:4] == [
        "::add-mask::rt_secret",
        "::add-mask::s3cret",
        "::add-mask::u1",
        '::add-mask::{"password":"s3cret","user":"u1"}',
    ]
    assert "s3cret" not in "\n".join(lines[4:]) and "s3cret" not in err
    written = parse_github_env(env_file.read_text())
    assert written == {
        "JIT_REQUEST_ID": "req_1",
        "JIT_REQUEST_TOKEN": "rt_secret",
        "JIT_CREDENTIAL_PASSWORD": "s3cret",
        "JIT_CREDENTIAL_USER": "u1",
        "JIT_CREDENTIAL": '{"password":"s3cret","user":"u1"}',
        "JIT_EXPIRES_AT": EXPIRES,
    }


def test_the_client_runs_as_a_single_file(tmp_path):
    copy = tmp_path / "client.py"
    copy.write_text(open(client.__file__).read())
    done = subprocess.run(
        ["python3", str(copy), "request", "x", "--reason", "r"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == EXIT_USAGE and "JIT_URL" in done.stderr


def test_http_json_against_a_local_server():
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen = {}

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, code, body, headers=()):
            data = json.dumps(body).encode()
            self.send_response(code)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self):  # noqa: N802
            length = int(self.headers["Content-Length"])
            seen["body"] = json.loads(self.rfile.read(length))
            seen["auth"] = self.headers["Authorization"]
            seen["key"] = self.headers["Idempotency-Key"]
            self._answer(201, {"id": "req_1"})

        def do_GET(self):  # noqa: N802
            if self.path == "/refused":
                self._answer(403, {"error": "action_not_allowed", "message": "Not for you."})
            elif self.path == "/broken":
                self._answer(503, {"error": "unavailable"}, [("Retry-After", "3")])
            else:
                self._answer(302, {}, [("Location", "https://elsewhere.example/steal")])

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        status, body = client.http_json(
            "POST",
            base + "/v1/requests",
            token="t0k",
            body={"a": 1},
            headers={"Idempotency-Key": "k"},
        )
        assert (status, body) == (201, {"id": "req_1"})
        assert seen == {"body": {"a": 1}, "auth": "Bearer t0k", "key": "k"}
        with pytest.raises(ApiError) as refused:
            client.http_json("GET", base + "/refused")
        assert (refused.value.status, refused.value.code) == (403, "action_not_allowed")
        assert refused.value.message == "Not for you."
        with pytest.raises(Transient) as broken:
            client.http_json("GET", base + "/broken")
        assert broken.value.retry_after == 3
        with pytest.raises(ApiError) as redirected:  # the token is not followed elsewhere
            client.http_json("GET", base + "/moved", token="t0k")
        assert redirected.value.status == 302
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(Transient):
        client.http_json("GET", base + "/gone", timeout=2)


def test_env_format_from_the_loop_carries_what_release_needs():
    code, _, out, err = run(
        BASE + ["--format", "env", "--quiet"],
        [
            (201, CREATED),
            status("active", 2),
            (200, {"credential": {"token": "t"}, "expires_at": EXPIRES}),
        ],
    )
    assert code == EXIT_GRANTED and err == ""
    assert out.splitlines() == [
        "export JIT_CREDENTIAL_TOKEN=t",
        """export JIT_CREDENTIAL='{"token":"t"}'""",
        "export JIT_REQUEST_ID=req_1",
        f"export JIT_EXPIRES_AT={EXPIRES}",
        "export JIT_REQUEST_TOKEN=rt_secret",
    ]


# ------------------------------------------------------------------ the client's own variables

#: Credential keys that would land on the client's own settings under a plain `JIT_<KEY>`.
CLASHING = {
    "token": "eyJhbGciOi.jwt.sig",
    "url": "https://elsewhere.example",
    "request_id": "req_other",
    "request_token": "rt_other",
    "audience": "other",
    "idempotency_key": "k",
    "environment": "prod",
    "id_token": "i",
    "expires_at": "never",
    "Token": "T",
}


def test_the_client_names_every_variable_it_reads():
    source = Path(client.__file__).read_text(encoding="utf-8")
    read = set(re.findall(r'env(?:\.get\(|\[)"(JIT_[A-Z0-9_]+)"', source))
    read |= set(re.findall(r'default="(JIT_[A-Z0-9_]+)"', source))
    assert {"JIT_URL", "JIT_TOKEN", "JIT_REQUEST_ID", "JIT_REQUEST_TOKEN"} <= read
    assert read == client.CLIENT_ENV


def test_credential_fields_never_take_the_clients_own_variable_names():
    variables = credential_vars("req_1", CLASHING, EXPIRES, "rt_secret")
    exported = dict(variables)
    assert len(exported) == len(variables) - 1  # `token` and `Token` share a name, nothing else
    own = client.CLIENT_ENV & set(exported)
    assert own == {"JIT_REQUEST_ID", "JIT_REQUEST_TOKEN"}  # the handle `jit release` reads
    assert exported["JIT_REQUEST_ID"] == "req_1" and exported["JIT_REQUEST_TOKEN"] == "rt_secret"
    assert exported["JIT_EXPIRES_AT"] == EXPIRES
    assert exported["JIT_CREDENTIAL_URL"] == "https://elsewhere.example"
    assert exported["JIT_CREDENTIAL_EXPIRES_AT"] == "never"
    assert json.loads(exported["JIT_CREDENTIAL"]) == CLASHING


def test_eval_of_a_token_grant_keeps_the_pipelines_own_token():
    """`eval "$(jit request … --format env)"` and then a second `jit request` in the same job."""
    script = format_env(credential_vars("req_1", CLASHING, EXPIRES, "rt_secret"))
    shown = subprocess.run(
        ["sh", "-c", script + 'printf "%s|%s|%s" "$JIT_TOKEN" "$JIT_URL" "$JIT_CREDENTIAL_TOKEN"'],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "JIT_TOKEN": "pipeline-token", "JIT_URL": "https://jit"},
    ).stdout
    assert shown == "pipeline-token|https://jit|T"  # `Token` came last and won its own name


# ------------------------------------------------------------------ a server that does not answer

DOWN = Transient("URLError: [Errno 111] Connection refused")
GRANTED = [(201, CREATED), status("active", 2), (200, {"credential": {"p": "s"}, "expires_at": EXPIRES})]
UNTIL = re.compile(r"until \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


def test_waiting_for_a_server_that_does_not_answer_is_said_once_with_its_deadline():
    code, _, _, err = run(BASE + ["--quiet"], [DOWN, DOWN, DOWN, *GRANTED])
    assert code == EXIT_GRANTED
    lines = err.splitlines()
    assert len(lines) == 1, err  # even with --quiet: a silent 5-minute wait looks like a hang
    assert "https://jit.example" in lines[0] and "Connection refused" in lines[0]
    assert "5m00s" in lines[0] and UNTIL.search(lines[0])


def test_the_announced_deadline_is_the_timeout_when_that_is_shorter():
    code, _, _, err = run(BASE + ["--timeout", "2m"], [DOWN, DOWN, *GRANTED])
    assert code == EXIT_GRANTED
    announced = [line for line in err.splitlines() if UNTIL.search(line)]
    assert len(announced) == 1 and "2m00s" in announced[0]
    assert "retrying in" in err  # without --quiet each retry is still shown


def test_help_says_how_long_an_unreachable_server_is_retried(capsys):
    assert client.main(["request", "--help"], env={}) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "CREATE_RETRY_SECONDS" in text
    assert f"{int(client.CREATE_RETRY_SECONDS)} s" in text
