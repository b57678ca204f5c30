"""`webhook` backend against a real local HTTP receiver that verifies signatures."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import ValidationError

from workers.backends import registry
from workers.backends.base import BackendEnv, GrantError
from workers.backends.webhook import WebhookBackend, sign, verify_signature

SECRET = "receiver-shared-secret"
ENV = "JIT_TEST_WEBHOOK_SECRET"


class Receiver:
    """What the handler does (`mode`) and what it saw (`calls`)."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.secret = SECRET
        self.calls: list[dict] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/jit/hook"

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def _reply(self, status: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                ok = verify_signature(
                    receiver.secret,
                    self.headers.get("X-Jit-Request-Timestamp"),
                    raw,
                    self.headers.get("X-Jit-Signature"),
                )
                receiver.calls.append({"headers": dict(self.headers), "raw": raw, "verified": ok})
                if not ok:
                    return self._reply(401, b'{"error":"bad signature"}')
                body = json.loads(raw)
                mode = receiver.mode
                if mode == "ok":
                    if body["event"] == "grant":
                        cred = {
                            "token": f"tok-{body['request']['id']}",
                            "expires": body["request"]["expires_at"],
                        }
                        return self._reply(200, json.dumps(cred).encode())
                    return self._reply(204, b"")
                if mode == "summary":  # a revoke endpoint that says what it saw (echoing the credential)
                    if body["event"] == "grant":
                        return self._reply(200, json.dumps({"token": "tok-summary-0123456789"}).encode())
                    seen = {"calls": 7, "last_ip": "10.1.2.3", "note": f"token {body['credential']['token']}"}
                    return self._reply(200, json.dumps({**seen, "token": "tok-summary-0123456789"}).encode())
                if mode == "500":
                    return self._reply(500, b'{"error":"boom","leaked":"internal-secret-xyz"}')
                if mode == "slow":
                    time.sleep(2)
                    return self._reply(200, b"{}")
                if mode == "list":
                    return self._reply(200, b'["not","an","object"]')
                if mode == "html":
                    return self._reply(200, b"<html>hi</html>", "text/html")
                if mode == "redirect":
                    self.send_response(302)
                    self.send_header("Location", "http://127.0.0.1:9/elsewhere")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                return self._reply(418, b"{}")

        return Handler


@pytest.fixture
def receiver():
    r = Receiver()
    r.thread.start()
    yield r
    r.server.shutdown()
    r.server.server_close()


def make_backend(url: str, secret: str = SECRET, **config) -> WebhookBackend:
    cfg = WebhookBackend.Config(url=url, secret_env=ENV, **config)
    return WebhookBackend(cfg, BackendEnv(environ={ENV: secret}))


def test_registered():
    assert registry()["webhook"] is WebhookBackend
    assert WebhookBackend.enforces_expiry is False


def test_grant_returns_the_receivers_credential(receiver, make_request):
    request = make_request()
    cred = make_backend(receiver.url).grant(request)
    assert cred == {"token": f"tok-{request.id}", "expires": request.as_json()["expires_at"]}

    (call,) = receiver.calls
    assert call["verified"]
    h = call["headers"]
    assert h["X-Jit-Event"] == "grant"
    assert h["X-Jit-Request-Id"] == request.id
    assert h["Content-Type"] == "application/json"
    assert abs(int(h["X-Jit-Request-Timestamp"]) - time.time()) < 10
    assert h["X-Jit-Signature"] == sign(SECRET, h["X-Jit-Request-Timestamp"], call["raw"])
    assert json.loads(call["raw"]) == {"event": "grant", "request": request.as_json()}


def test_revoke_sends_credential_when_known(receiver, make_request):
    backend = make_backend(receiver.url)
    request = make_request()
    backend.revoke(request, {"token": "tok-1"})
    backend.revoke(request, None)
    first, second = (json.loads(c["raw"]) for c in receiver.calls)
    assert first == {
        "event": "revoke",
        "request": request.as_json(),
        "credential": {"token": "tok-1"},
    }
    assert second == {"event": "revoke", "request": request.as_json()}
    assert all(c["verified"] and c["headers"]["X-Jit-Event"] == "revoke" for c in receiver.calls)


def test_revoke_answer_is_the_session_summary_scrubbed(receiver, make_request):
    receiver.mode = "summary"
    backend = make_backend(receiver.url)
    request = make_request()
    cred = backend.grant(request)
    observed = backend.revoke(request, cred)
    assert observed == {"output": {"calls": 7, "last_ip": "10.1.2.3", "note": "token ***"}}
    receiver.mode = "ok"  # 204 without a body: no summary, and the revoke still succeeds
    assert backend.revoke(request, cred) is None


def test_bad_signature_is_rejected_by_the_receiver(receiver, make_request):
    backend = make_backend(receiver.url, secret="not-the-receivers-secret")
    with pytest.raises(GrantError, match="HTTP 401"):
        backend.grant(make_request())
    assert receiver.calls[0]["verified"] is False


def test_server_error_is_a_grant_error_without_the_body(receiver, make_request):
    receiver.mode = "500"
    with pytest.raises(GrantError) as e:
        make_backend(receiver.url).grant(make_request())
    assert "HTTP 500" in str(e.value)
    assert "internal-secret-xyz" not in str(e.value) and SECRET not in str(e.value)
    assert len(receiver.calls) == 1  # one attempt per call: the job layer retries


def test_timeout_is_a_grant_error(receiver, make_request):
    receiver.mode = "slow"
    started = time.monotonic()
    with pytest.raises(GrantError, match="timed out"):
        make_backend(receiver.url, timeout=0.3).grant(make_request())
    assert time.monotonic() - started < 1.5
    assert len(receiver.calls) == 1


@pytest.mark.parametrize(
    "mode, fragment",
    [("list", "not an object"), ("html", "without a JSON body"), ("redirect", "HTTP 302")],
)
def test_unusable_grant_answers_are_grant_errors(receiver, make_request, mode, fragment):
    receiver.mode = mode
    with pytest.raises(GrantError, match=fragment):
        make_backend(receiver.url).grant(make_request())


def test_connection_refused_is_a_grant_error(make_request):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(GrantError, match="connection failed"):
        make_backend(f"http://127.0.0.1:{port}/hook", retries=1).grant(make_request())


def test_missing_secret_is_a_grant_error(receiver, make_request):
    backend = WebhookBackend(WebhookBackend.Config(url=receiver.url, secret_env="NOT_SET_X"), BackendEnv(environ={}))
    with pytest.raises(GrantError, match="NOT_SET_X is not set"):
        backend.grant(make_request())
    assert receiver.calls == []


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/hook",
        "http://10.0.0.1/hook",
        "ftp://example.com/x",
        "example.com/hook",
        "https://user:pw@example.com/hook",
        "http://127.0.0.1.example.com/x",
        "https:///nohost",
    ],
)
def test_config_rejects_insecure_or_odd_urls(url):
    with pytest.raises(ValidationError):
        WebhookBackend.Config(url=url, secret_env=ENV)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/jit",
        "http://127.0.0.1:8080/x",
        "http://[::1]/x",
        "http://localhost:9000/x",
    ],
)
def test_config_accepts_https_and_loopback_http(url):
    cfg = WebhookBackend.Config(url=url, secret_env=ENV)
    assert (cfg.timeout, cfg.retries) == (10.0, 3)


def test_config_rejects_unknown_keys_and_bad_numbers():
    for extra in ({"secret": "inline"}, {"timeout": 0}, {"retries": -1}):
        with pytest.raises(ValidationError):
            WebhookBackend.Config(url="https://h.example/x", secret_env=ENV, **extra)


def test_verify_signature_helper():
    body = b'{"event":"grant"}'
    now = 1_800_000_000
    good = sign("s3cret", now, body)
    assert verify_signature("s3cret", str(now), body, good, now=now)
    assert verify_signature(b"s3cret", now, body.decode(), good, now=now + 299)
    assert not verify_signature("s3cret", now, body, good, now=now + 301)  # too old
    assert not verify_signature("s3cret", now, body, good, now=now - 301)  # from the future
    assert not verify_signature("other", now, body, good, now=now)
    assert not verify_signature("s3cret", now, body + b" ", good, now=now)  # tampered body
    assert not verify_signature("s3cret", now + 1, body, good, now=now)  # tampered timestamp
    assert not verify_signature("s3cret", now, body, good.replace("v0=", "v1="), now=now)
    assert not verify_signature("s3cret", "not-a-number", body, good, now=now)
    assert not verify_signature("s3cret", None, body, good, now=now)
    assert not verify_signature("s3cret", now, body, None, now=now)
    assert verify_signature("s3cret", now, body, good, tolerance=10, now=now + 10)
    assert not verify_signature("s3cret", now, body, good, tolerance=10, now=now + 11)


# -- a receiver that answers slowly or too much: one deadline, one size cap -----------------------


class RawReceiver:
    """A TCP server that reads one HTTP request per connection and answers with `answer(sock)`."""

    def __init__(self, answer, tls: ssl.SSLContext | None = None) -> None:
        self.answer, self.tls = answer, tls
        self.stop = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except OSError:
                conn.close()
                return
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            while len(body) < length:
                body += conn.recv(65536)
            try:
                self.answer(conn, self.stop)
            except OSError:
                pass  # the client hung up: what we want it to do

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.sock.close()


def dribble_headers(conn, stop):
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    while not stop.wait(0.05):  # a header byte every 50 ms, never done
        conn.sendall(b"X")


def dribble_body(conn, stop):
    """No length (the body ends when the connection does), then a byte every 50 ms."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{")
    while not stop.wait(0.05):
        conn.sendall(b" ")


def endless_body(conn, stop):
    """No length, just more and more JSON (capped at 8 MiB so a test of old code ends)."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
    conn.sendall(b'{"pad": "')
    for _ in range(128):
        if stop.is_set():
            return
        conn.sendall(b"x" * 65536)
    conn.sendall(b'"}')


def announced_big(conn, stop):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 104857600\r\n\r\n")
    conn.sendall(b'{"pad": "' + b"x" * 65536)


def exactly_the_cap(conn, stop):
    body = b'{"pad": "' + b"x" * (64 * 1024 - 11) + b'"}'
    assert len(body) == 64 * 1024
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


@pytest.fixture
def raw_receiver():
    made = []

    def make(answer, tls: ssl.SSLContext | None = None) -> RawReceiver:
        made.append(RawReceiver(answer, tls))
        return made[-1]

    yield make
    for r in made:
        r.close()


def call_in_thread(fn, within: float = 60.0):
    """Run fn in a thread; (finished?, exception or result)."""
    out: dict = {}

    def run():
        try:
            out["result"] = fn()
        except Exception as e:  # noqa: BLE001  (reported to the test)
            out["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=within)
    return not thread.is_alive(), out.get("error", out.get("result"))


@pytest.mark.parametrize("answer", [dribble_headers, dribble_body], ids=["headers", "body"])
@pytest.mark.parametrize("event", ["grant", "revoke"])
def test_a_dribbling_receiver_cannot_hold_a_worker_past_the_timeout(raw_receiver, make_request, answer, event):
    backend = make_backend(raw_receiver(answer).url, timeout=1)
    request = make_request()
    call = (lambda: backend.grant(request)) if event == "grant" else (lambda: backend.revoke(request, None))
    finished, outcome = call_in_thread(call)
    assert finished, "the call outlived its timeout by far: each read was bounded, not the call"
    if event == "revoke" and answer is dribble_body:
        assert outcome is None  # a 2xx status is all revoke needs; a body not read in time is ignored
    else:
        assert isinstance(outcome, GrantError) and "timed out after 1s" in str(outcome)


@pytest.mark.parametrize("answer", [endless_body, announced_big], ids=["unannounced", "announced"])
def test_a_grant_answer_over_64_kib_is_refused(raw_receiver, make_request, answer):
    backend = make_backend(raw_receiver(answer).url, timeout=30)
    finished, outcome = call_in_thread(lambda: backend.grant(make_request()))
    assert finished
    assert isinstance(outcome, GrantError) and "more than 64 KiB" in str(outcome)


def test_a_grant_answer_of_exactly_64_kib_is_accepted(raw_receiver, make_request):
    backend = make_backend(raw_receiver(exactly_the_cap).url)
    assert backend.grant(make_request())["pad"] == "x" * (64 * 1024 - 11)


# -- the same over TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 (key and cert in PEM files)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jit test receiver")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("tls")
    (d / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return d / "cert.pem", d / "key.pem"


@pytest.fixture
def tls_receiver(receiver, tls_files):
    """The signature-checking receiver above, behind TLS."""
    cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    receiver.server.socket = context.wrap_socket(receiver.server.socket, server_side=True)
    return receiver


def https_url(receiver) -> str:
    return receiver.url.replace("http://", "https://")


def test_an_untrusted_certificate_is_refused(tls_receiver, make_request):
    with pytest.raises(GrantError, match="TLS verification failed"):
        make_backend(https_url(tls_receiver)).grant(make_request())
    assert tls_receiver.calls == []


def test_grant_over_tls_and_a_dribbling_tls_receiver(tls_receiver, tls_files, make_request, monkeypatch, raw_receiver):
    from workers.backends import webhook

    trusting = ssl.create_default_context(cafile=str(tls_files[0]))
    monkeypatch.setattr(webhook, "_tls_context", lambda: trusting)
    request = make_request()
    assert make_backend(https_url(tls_receiver)).grant(request)["token"] == f"tok-{request.id}"

    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(*tls_files)
    dribbler = raw_receiver(dribble_body, tls=server_side)
    backend = make_backend(dribbler.url.replace("http://", "https://"), timeout=1)
    finished, outcome = call_in_thread(lambda: backend.grant(make_request()))
    assert finished
    assert isinstance(outcome, GrantError) and "timed out after 1s" in str(outcome)
