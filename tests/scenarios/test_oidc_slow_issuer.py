"""A slow OIDC issuer: its key set trickles in a byte at a time. Tokens whose key is cached are
answered at once, one fetch per issuer runs at a time, and the fetch ends at its deadline."""

from __future__ import annotations

import datetime
import ipaddress
import json
import socketserver
import ssl
import threading
from collections import Counter
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from procs import wait_until
from test_oidc import (
    GH_KID,
    IMPOSTOR_KEY,
    RSA_KEY,
    FakeClock,
    github_claims,
    mint,
    public_jwk,
)

from bot.core.policy.oidc import OidcConfig
from bot.request.http.oidc import OidcRejected, OidcVerifier

#: The verifier's deadline for one fetch (discovery + key set), in seconds.
DEADLINE = 3.0
#: A trickling response sends one byte this often: a key set would take minutes to arrive.
TRICKLE = 0.25


class SlowIssuer:
    """A loopback issuer on raw sockets. `slow` names the responses that trickle out a byte
    at a time: "discovery" or "jwks", and "headers" (the status line and headers trickle
    too) or "body" (the headers arrive at once, then the body trickles). With `tls` (a
    server-side SSLContext) it speaks https; `slow = ("handshake", ...)` never completes
    the TLS handshake."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.keys = [public_jwk(RSA_KEY, GH_KID)]
        self.slow: tuple[str, str] | None = None
        self.requests: Counter[str] = Counter()
        self.cut: Counter[str] = Counter()  # responses the client hung up on before their end
        self.sending = 0  # responses trickling right now
        self.most_at_once: Counter[str] = Counter()
        self._active: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        issuer = self

        class Handler(socketserver.StreamRequestHandler):
            def setup(self) -> None:
                if tls is not None:
                    if issuer.slow and issuer.slow[0] == "handshake":
                        issuer.requests["handshake"] += 1
                        issuer._closing.wait(600)  # says nothing: the client's handshake waits
                        raise ConnectionAbortedError
                    self.request = tls.wrap_socket(self.request, server_side=True)
                super().setup()

            def handle(self) -> None:
                line = self.rfile.readline(4096).decode()
                while self.rfile.readline(4096) not in (b"\r\n", b"\n", b""):
                    pass
                path = line.split(" ")[1] if line.count(" ") >= 2 else "/"
                issuer.respond(path, self.wfile)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}/gh"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def respond(self, path: str, out) -> None:
        if path == "/gh/.well-known/openid-configuration":
            what, body = "discovery", {"issuer": self.url, "jwks_uri": f"{self.url}/jwks"}
        elif path == "/gh/jwks":
            what, body = "jwks", {"keys": list(self.keys), "padding": "x" * 2000}
        else:
            out.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        data = json.dumps(body).encode()
        head = (
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
        ).encode()
        slow = self.slow if self.slow and self.slow[0] == what else None
        with self._lock:
            self.requests[what] += 1
            self._active[what] += 1
            self.most_at_once[what] = max(self.most_at_once[what], self._active[what])
            self.sending += bool(slow)
        try:
            if slow is None:
                out.write(head + data)
                return
            if slow[1] == "body":
                out.write(head)
                self._trickle(data, out)
            else:
                self._trickle(head + data, out)
        except OSError:  # the client hung up mid-response
            with self._lock:
                self.cut[what] += 1
        finally:
            with self._lock:
                self._active[what] -= 1
                self.sending -= bool(slow)

    def _trickle(self, data: bytes, out) -> None:
        for i in range(len(data)):
            if self._closing.wait(TRICKLE):
                return
            out.write(data[i : i + 1])
            out.flush()

    def close(self) -> None:
        self._closing.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def issuer():
    i = SlowIssuer()
    yield i
    i.close()


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def verifier(clock):
    return OidcVerifier(timeout=DEADLINE, cooldown=60.0, clock=clock)


def configs(issuer: SlowIssuer) -> dict[str, OidcConfig]:
    return {"deploy": OidcConfig(issuer=issuer.url, audience="jit-bot", claims={"repository": "acme/deploy"})}


def verify_all(verifier: OidcVerifier, tokens: list[str], cfgs) -> list:
    """Verify every token in its own thread at once: the pipeline name, or the OidcRejected."""
    results: list = [None] * len(tokens)

    def one(i: int) -> None:
        try:
            results[i] = verifier.verify(tokens[i], cfgs)[0]
        except OidcRejected as e:
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(tokens))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)  # a trickling key set would take minutes: only the deadline ends it sooner
    assert not any(t.is_alive() for t in threads), "a verification is still waiting"
    return results


def test_tokens_whose_key_is_cached_are_answered_while_a_slow_refresh_runs(issuer, verifier, clock):
    cfgs = configs(issuer)
    assert verifier.verify(mint(github_claims(issuer.url)), cfgs)[0] == "deploy"  # keys cached
    issuer.slow = ("jwks", "body")
    issuer.keys.append(public_jwk(IMPOSTOR_KEY, "gh-rsa-2"))  # rotated in, trickling out
    clock.t += 3600  # the cached key set is stale: the next token starts a refresh

    # the refresh starts in the background: this token's key is cached, it does not wait
    assert verifier.verify(mint(github_claims(issuer.url)), cfgs)[0] == "deploy"
    wait_until(lambda: issuer.sending == 1, message="the refresh to be trickling")

    known = [mint(github_claims(issuer.url)) for _ in range(3)]
    rotated = [mint(github_claims(issuer.url), key=IMPOSTOR_KEY, kid="gh-rsa-2") for _ in range(2)]
    cached = verify_all(verifier, known, cfgs)
    assert cached == ["deploy"] * 3
    assert issuer.sending == 1  # answered while the refresh was still trickling in
    assert issuer.requests["jwks"] == 2  # the first fetch and this one refresh, no more

    # a token whose key is not cached waits for the refresh, but only until its deadline
    outcomes = verify_all(verifier, rotated, cfgs)
    assert [(e.status, e.reason) for e in outcomes] == [(401, "unknown signing key")] * 2
    wait_until(lambda: issuer.cut["jwks"] == 1, message="the refresh to be cut at its deadline")
    assert issuer.requests["jwks"] == 2 and issuer.most_at_once["jwks"] == 1


@pytest.mark.parametrize(
    "slow",
    [("discovery", "headers"), ("discovery", "body"), ("jwks", "headers"), ("jwks", "body")],
    ids=["discovery-headers", "discovery-body", "jwks-headers", "jwks-body"],
)
def test_the_first_fetch_from_a_slow_issuer_ends_at_its_deadline(issuer, verifier, clock, slow):
    issuer.slow = slow
    cfgs = configs(issuer)
    tokens = [mint(github_claims(issuer.url)) for _ in range(4)]

    outcomes = verify_all(verifier, tokens, cfgs)

    assert [(e.status, e.reason) for e in outcomes] == [(503, "issuer keys unavailable")] * 4
    what = slow[0]
    assert issuer.requests[what] == 1 and issuer.most_at_once[what] == 1  # one fetch at a time
    wait_until(lambda: issuer.cut[what] == 1, message="the slow response to be cut")
    assert issuer.sending == 0

    # the issuer recovers: after the cool-down the next token fetches again and is accepted
    issuer.slow = None
    clock.t += 60
    assert verifier.verify(tokens[0], cfgs)[0] == "deploy"


# ------------------------------------------------------------------ https


def self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context for 127.0.0.1 and the CA bundle (its own certificate) that trusts it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "issuer.pem", tmp_path / "issuer.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    return ctx, cert_file


@pytest.fixture
def tls_issuer(tmp_path, monkeypatch):
    ctx, bundle = self_signed(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(bundle))  # trusted as `requests` would
    i = SlowIssuer(tls=ctx)
    yield i
    i.close()


def test_an_https_issuer_is_verified_and_trusted_like_requests_would(tls_issuer, verifier, monkeypatch):
    cfgs = configs(tls_issuer)
    assert verifier.verify(mint(github_claims(tls_issuer.url)), cfgs)[0] == "deploy"
    assert tls_issuer.requests["jwks"] == 1

    monkeypatch.delenv("REQUESTS_CA_BUNDLE")  # the default bundle does not know this issuer
    untrusted = OidcVerifier(timeout=DEADLINE, clock=FakeClock())
    e = pytest.raises(OidcRejected, untrusted.verify, mint(github_claims(tls_issuer.url)), cfgs)
    assert (e.value.status, e.value.reason) == (503, "issuer keys unavailable")


def test_a_tls_handshake_that_never_finishes_ends_at_the_deadline(tls_issuer, verifier):
    tls_issuer.slow = ("handshake", "")
    outcomes = verify_all(verifier, [mint(github_claims(tls_issuer.url)) for _ in range(3)], configs(tls_issuer))
    assert [(e.status, e.reason) for e in outcomes] == [(503, "issuer keys unavailable")] * 3
    assert tls_issuer.requests["handshake"] == 1
