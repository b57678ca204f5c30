"""`webhook` backend against a real local HTTP receiver that verifies signatures."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pydantic import ValidationError

from workers.backends.base import BackendEnv, GrantError, registry
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
    backend = WebhookBackend(
        WebhookBackend.Config(url=receiver.url, secret_env="NOT_SET_X"), BackendEnv(environ={})
    )
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
