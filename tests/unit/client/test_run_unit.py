"""`jit run`'s parts: masking across reads, COMMAND's environment, the transcript's cap, and one
run against a scripted server with a real child process (exit code, release, session record)."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jit_client as client
from jit_client import Masker, Transcript, child_environment, masked_forms

SECRET = "pa ss/w@rd-5ecret"
CREDENTIAL = {
    "username": "jit_ro_1234",
    "password": SECRET,
    "host": "db.internal",
    "port": 5432,
    "dbname": "orders",
    "dsn": f"postgresql://jit_ro_1234:{urllib.parse.quote(SECRET, safe='')}@db.internal:5432/orders",
}


def mask_in_pieces(text: bytes, secrets: list[bytes], size: int) -> bytes:
    m = Masker(secrets)
    out = b"".join(m.feed(text[i : i + size]) for i in range(0, len(text), size))
    return out + m.flush()


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64, 4096])
def test_a_secret_split_across_reads_is_masked(size):
    text = f"connecting with {SECRET} ... and again:{SECRET}\nend".encode()
    out = mask_in_pieces(text, masked_forms([SECRET]), size)
    assert out == b"connecting with *** ... and again:***\nend"


def test_url_encoded_and_json_escaped_forms_are_masked():
    forms = masked_forms([SECRET, 'quo"te\\x'])
    text = (
        f"dsn=postgresql://u:{urllib.parse.quote(SECRET, safe='')}@h/db form={urllib.parse.quote_plus(SECRET)} "
        f"json={json.dumps(chr(34).join(['quo', 'te']) + chr(92) + 'x')}"
    ).encode()
    out = mask_in_pieces(text, forms, 3)
    assert SECRET.encode() not in out
    assert urllib.parse.quote(SECRET, safe="").encode() not in out
    assert urllib.parse.quote_plus(SECRET).encode() not in out
    assert b'json="***"' in out


def test_a_shorter_secret_inside_a_longer_one_never_leaks_the_rest():
    long, short = "abcdefghij", "abcd"
    for size in (1, 2, 3, 11):
        out = mask_in_pieces(f"<{long}><{short}x>".encode(), masked_forms([long, short]), size)
        assert out == b"<***><***x>"


def test_text_without_secrets_passes_unchanged_and_nothing_is_held_at_the_end():
    m = Masker(masked_forms([SECRET]))
    first = m.feed(b"plain output pa")  # `pa` may start the secret: held back
    assert first == b"plain output "
    assert m.feed(b"ge 2\n") == b"page 2\n"
    assert m.flush() == b""


def test_short_values_are_not_masked():
    assert masked_forms(["on", "1", "abc"]) == []


def test_the_child_gets_the_credential_and_never_the_pipelines_secrets():
    parent = {
        "PATH": "/usr/bin",
        "JIT_TOKEN": "pipeline-bearer",
        "JIT_URL": "https://jit",
        "JIT_REQUEST_TOKEN": "rt",
        "JIT_ID_TOKEN": "oidc",
        "MY_OIDC": "oidc2",
        "JIT_CREDENTIAL_PASSWORD": "an older grant's",
        "HOME": "/home/ci",
    }
    env = child_environment(parent, CREDENTIAL, "postgres", "req1", "2026-01-01T00:00:00Z", drop=["MY_OIDC"])
    for gone in ("JIT_TOKEN", "JIT_URL", "JIT_REQUEST_TOKEN", "JIT_ID_TOKEN", "MY_OIDC"):
        assert gone not in env
    assert env["PATH"] == "/usr/bin" and env["HOME"] == "/home/ci"
    assert env["PGPASSWORD"] == SECRET and env["PGUSER"] == "jit_ro_1234" and env["PGPORT"] == "5432"
    assert env["PGHOST"] == "db.internal" and env["PGDATABASE"] == "orders"
    assert env["DATABASE_URL"] == CREDENTIAL["dsn"]
    assert json.loads(env["JIT_CREDENTIAL"]) == CREDENTIAL
    assert env["JIT_CREDENTIAL_PASSWORD"] == SECRET
    assert env["JIT_REQUEST_ID"] == "req1"


def test_per_backend_variables():
    redis = child_environment({}, {"url": "redis://u:p@h:1/0", "password": "p"}, "redis_acl", "r", None)
    assert redis["REDIS_URL"] == "redis://u:p@h:1/0"
    token = child_environment({"JIT_TOKEN": "pipeline"}, {"token": "issued.jwt"}, "token", "r", None)
    assert token["JIT_TOKEN"] == "issued.jwt"
    assert client.guess_backend(CREDENTIAL) == "postgres"
    assert client.guess_backend({"url": "rediss://x"}) == "redis_acl"
    assert client.guess_backend({"token": "t", "token_type": "Bearer"}) == "token"


def test_the_transcript_keeps_the_tail_and_counts_everything():
    t = Transcript(cap=10)
    for chunk in (b"line1\n", b"line2\n", b"line3\n"):
        t.count(chunk)
        t.add(chunk)
    assert t.text() == "ne2\nline3\n" and t.truncated
    assert t.output_bytes == 18 and t.output_lines == 3


# ------------------------------------------------------------------ one run against a scripted server


class Server:
    """Answers the client's calls like jit does; records them."""

    def __init__(self, credential):
        self.credential = credential
        self.calls = []
        self.status = "pending"

    def __call__(self, method, url, **kw):
        path = urllib.parse.urlsplit(url).path
        self.calls.append((method, path, kw))
        view = {
            "id": "req1",
            "status": self.status,
            "approvals": {"count": 1, "required": 1},
            "issued_at": "2026-01-01T00:00:00Z",
            "expires_at": "2999-01-01T00:00:00Z",
        }
        if method == "POST" and path == "/v1/requests":
            self.status = "active"
            return 201, {**view, "request_token": "rt-secret-token"}
        if method == "GET" and path.endswith("/credential"):
            return 200, {"id": "req1", "credential": self.credential, "expires_at": view["expires_at"]}
        if method == "GET":
            return 200, view
        if method == "DELETE":
            self.status = "revoked"
            return 200, {**view, "status": "revoked"}
        if method == "POST" and path.endswith("/session"):
            return 201, {"ok": True}
        raise AssertionError((method, path))


def run_command(script: str, credential=CREDENTIAL):
    server = Server(credential)
    out, err = io.BytesIO(), io.BytesIO()
    outs, errs = io.TextIOWrapper(out), io.TextIOWrapper(err)
    argv = ["run", "db", "--url", "https://jit.example", "--token", "pt", "--quiet", "--", sys.executable, "-c", script]
    args = client.build_parser({}).parse_args(argv[: argv.index("--")])
    args.cmd = argv[argv.index("--") + 1 :]
    runner = client.Runner(args, {"JIT_TOKEN": "pt", "PATH": "/usr/bin"}, outs, errs, http=server)
    code = runner.run()
    outs.flush()
    errs.flush()
    return code, server, out.getvalue(), err.getvalue()


def test_run_streams_masked_output_returns_the_exit_code_releases_and_records():
    script = (
        "import os, sys\n"
        "print('user', os.environ['PGUSER'], 'pw', os.environ['PGPASSWORD'])\n"
        "print('pipeline token seen:', os.environ.get('JIT_TOKEN'))\n"
        "sys.stderr.write('dsn ' + os.environ['DATABASE_URL'] + '\\n')\n"
        "sys.exit(3)\n"
    )
    code, server, out, err = run_command(script)
    assert code == 3
    assert SECRET.encode() not in out + err and urllib.parse.quote(SECRET, safe="").encode() not in out + err
    assert b"user *** pw ***" in out
    assert b"pipeline token seen: None" in out
    assert b"dsn ***" in err
    methods = [(m, p) for m, p, _ in server.calls]
    release = methods.index(("DELETE", "/v1/requests/req1"))
    session = methods.index(("POST", "/v1/requests/req1/session"))
    assert release < session
    body = server.calls[session][2]["body"]
    assert body["exit_code"] == 3 and body["ended_by"] == "command"
    assert SECRET not in body["transcript"] and "user *** pw ***" in body["transcript"]
    assert body["transcript_sha256"] == hashlib.sha256(body["transcript"].encode()).hexdigest()
    assert body["output_lines"] == 3 and body["output_bytes"] > len(body["transcript"]) - 20


def test_a_command_that_cannot_start_exits_127_and_still_releases():
    server = Server(CREDENTIAL)
    args = client.build_parser({}).parse_args(["run", "db", "--url", "https://jit.example", "--token", "pt", "--quiet"])
    args.cmd = ["/nonexistent/command"]
    runner = client.Runner(args, {}, io.StringIO(), io.StringIO(), http=server)
    assert runner.run() == 127
    assert ("POST", "/v1/requests/req1/session") in [(m, p) for m, p, _ in server.calls]


def test_run_without_a_command_is_a_usage_error():
    err = io.StringIO()
    code = client.main(["run", "db", "--url", "https://jit.example", "--token", "pt"], env={}, stderr=err)
    assert code == client.EXIT_USAGE and "after --" in err.getvalue()


# ------------------------------------------------------------------ the expiry warning


def session_for_warning(window_minutes: float):
    from datetime import UTC, datetime, timedelta

    err = io.StringIO()
    args = client.build_parser({}).parse_args(["run", "db", "--url", "https://jit.example", "--token", "pt"])
    args.cmd = ["true"]
    runner = client.Runner(args, {}, io.StringIO(), err, http=Server(CREDENTIAL))
    runner.req_token = "rt"
    issued = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    expires = issued + timedelta(minutes=window_minutes)
    session = client.CommandSession(runner, {"credential": CREDENTIAL, "expires_at": expires.isoformat()})
    session.issued_at = issued
    return session, err, issued, expires


def test_the_expiry_warning_comes_once_five_minutes_before_and_again_after_an_extension():
    from datetime import timedelta

    session, err, issued, expires = session_for_warning(30)
    session._maybe_warn(expires - timedelta(minutes=6))
    assert err.getvalue() == ""
    session._maybe_warn(expires - timedelta(minutes=5))
    session._maybe_warn(expires - timedelta(minutes=4))
    assert err.getvalue().count("jit: access expires in 5 min") == 1
    # an extension moves expires_at later: armed again for the new time
    session.expires_at = expires + timedelta(minutes=20)
    session._maybe_warn(expires - timedelta(minutes=3))
    assert err.getvalue().count("access expires in") == 1
    session._maybe_warn(session.expires_at - timedelta(minutes=5))
    assert err.getvalue().count("jit: access expires in 5 min") == 2
    # and the watcher wakes for it rather than a whole poll later
    assert session._next_poll(session.expires_at - timedelta(minutes=5, seconds=1)) == pytest.approx(1.0)


def test_no_warning_for_windows_of_ten_minutes_or_less():
    from datetime import timedelta

    session, err, issued, expires = session_for_warning(10)
    for minute in range(11):
        session._maybe_warn(issued + timedelta(minutes=minute))
    assert err.getvalue() == ""


def test_a_session_record_stored_by_a_lost_answer_is_not_reported_as_lost():
    server = Server(CREDENTIAL)
    answers = [client.Transient("HTTP 502"), client.ApiError(409, "session_recorded", "recorded already")]

    def http(method, url, **kw):
        if url.endswith("/session") and answers:
            server.calls.append((method, urllib.parse.urlsplit(url).path, kw))
            raise answers.pop(0)
        return server(method, url, **kw)

    err = io.StringIO()
    args = client.build_parser({}).parse_args(["run", "db", "--url", "https://jit.example", "--token", "pt"])
    args.cmd = [sys.executable, "-c", "print('ok')"]
    runner = client.Runner(args, {}, io.StringIO(), err, http=http, sleep=lambda s: None)
    assert runner.run() == 0
    assert "not stored" not in err.getvalue() and "session recorded" in err.getvalue()


# ------------------------------------------------------------------ masking, for any split


_ALPHABET = st.sampled_from(list(b"abcd%@ \n"))


@settings(max_examples=300, deadline=None)
@given(
    secrets=st.lists(
        st.binary(min_size=4, max_size=12).map(lambda b: bytes(x % 4 + 97 for x in b)), min_size=1, max_size=4
    ),
    pieces=st.lists(st.one_of(st.integers(0, 3), st.lists(_ALPHABET, max_size=6).map(bytes)), max_size=20),
    cuts=st.lists(st.integers(1, 9), min_size=1, max_size=30),
)
def test_any_split_masks_like_reading_it_whole(secrets, pieces, cuts):
    text = b"".join(secrets[p % len(secrets)] if isinstance(p, int) else p for p in pieces)
    whole = Masker(secrets).feed(text, final=True)
    m = Masker(secrets)
    out, i, k = b"", 0, 0
    while i < len(text):
        size = cuts[k % len(cuts)]
        out += m.feed(text[i : i + size])
        i, k = i + size, k + 1
    out += m.flush()
    assert out == whole
    for s in secrets:
        assert s not in out.replace(b"***", b"\x00")


def test_a_transcript_that_json_would_blow_up_is_cut_to_what_the_server_reads():
    # colour codes: each ESC is six bytes of JSON
    script = "import sys\nfor i in range(30000): sys.stdout.write('\\x1b' * 40 + str(i) + '\\n')\n"
    code, server, out, err = run_command(script)
    assert code == 0
    [body] = [kw["body"] for m, p, kw in server.calls if p.endswith("/session")]
    assert len(json.dumps(body)) <= client.SESSION_BODY_MAX
    assert body["transcript_truncated"] and body["transcript"].endswith("29999\n")
    assert body["transcript_sha256"] == hashlib.sha256(body["transcript"].encode()).hexdigest()


def test_the_default_reason_names_the_program_and_never_its_arguments():
    server = Server(CREDENTIAL)
    args = client.build_parser({}).parse_args(["run", "db", "--url", "https://jit.example", "--token", "pt", "--quiet"])
    args.cmd = [sys.executable, "-c", "pass", "--api-key=expanded-ci-secret"]
    client.Runner(args, {}, io.StringIO(), io.StringIO(), http=server).run()
    [create] = [kw["body"] for m, p, kw in server.calls if (m, p) == ("POST", "/v1/requests")]
    assert create["reason"].startswith("jit run python") and "expanded-ci-secret" not in create["reason"]


def test_a_server_out_of_reach_past_expiry_stops_the_command_by_the_runners_clock():
    from datetime import UTC, datetime, timedelta

    server = Server(CREDENTIAL)
    expires = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()

    fetched = []

    def http(method, url, **kw):
        path = urllib.parse.urlsplit(url).path
        if method == "GET" and path.endswith("/credential"):
            fetched.append(path)
            return 200, {"id": "req1", "credential": CREDENTIAL, "expires_at": expires}
        if method == "GET" and fetched:
            raise client.Transient("connection refused")  # from the credential on: out of reach
        return server(method, url, **kw)

    err = io.StringIO()
    args = client.build_parser({}).parse_args(["run", "db", "--url", "https://jit.example", "--token", "pt"])
    args.cmd = [sys.executable, "-c", "import time\nwhile True: time.sleep(0.1)"]
    runner = client.Runner(args, {}, io.StringIO(), err, http=http, sleep=lambda s: None)
    assert runner.run() == 128 + 15
    assert "the grant expired at" in err.getvalue() and "stopping the command" in err.getvalue()
