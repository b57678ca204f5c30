"""Real receivers for the audit sinks, on loopback: an HTTP server (plain JSON lines or Splunk HEC)
and a syslog server over TCP or TLS that parses RFC 6587 octet-counted frames of RFC 5424
messages strictly. Each can go down (its port refuses connections, open ones are cut) and come
back on the same port. What they took is checked like a SIEM would: in order, no gaps, every
entry's hash and signature."""

from __future__ import annotations

import datetime as dt
import hmac
import ipaddress
import json
import re
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bot.store.audit import AuditKeys, entry_hash, entry_message
from workers.backends.webhook import verify_signature

# ------------------------------------------------------------------------- what was received


class Received:
    """Events a receiver took, in arrival order, with when each arrived (time.time())."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.at: list[float] = []
        self.lock = threading.Lock()
        self.problems: list[str] = []

    def add(self, row: dict[str, Any]) -> None:
        with self.lock:
            self.rows.append(row)
            self.at.append(time.time())

    def problem(self, what: str) -> None:
        with self.lock:
            self.problems.append(what)

    def seqs(self) -> list[int]:
        with self.lock:
            return [r["seq"] for r in self.rows]

    def distinct(self) -> set[int]:
        return set(self.seqs())

    def has_all(self, upto: int, start: int = 1) -> bool:
        return set(range(start, upto + 1)) <= self.distinct()

    def check(self, keys: AuditKeys, upto: int, start: int = 1) -> None:
        """What a SIEM would check: every entry from #start to #upto arrived, none before the one
        it follows (re-deliveries of earlier ones are fine: at least once), and each one's hash
        follows its predecessor's and carries jit's signature."""
        assert not self.problems, self.problems
        with self.lock:
            rows = list(self.rows)
        highest = start - 1
        by_seq: dict[int, dict[str, Any]] = {}
        for r in rows:
            seq = r["seq"]
            assert seq <= highest + 1, f"#{seq} arrived before #{highest + 1}: out of order"
            highest = max(highest, seq)
            if seq in by_seq:
                assert by_seq[seq] == r, f"#{seq} arrived twice with different content"
            by_seq[seq] = r
        missing = sorted(set(range(start, upto + 1)) - set(by_seq))
        assert not missing, f"never arrived: {missing[:20]}"
        for seq in range(start, upto + 1):
            r = dict(by_seq[seq])
            digest, sig, kid = r.pop("hash"), r.pop("sig"), r.pop("kid")
            assert entry_hash(r["prev"], r) == digest, f"#{seq}: hash does not match its content"
            assert keys.verify(entry_message(digest), sig, kid), f"#{seq}: not signed by jit"
            if seq > start:
                assert r["prev"] == by_seq[seq - 1]["hash"], f"#{seq} does not follow #{seq - 1}"


def wait_until(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


# ------------------------------------------------------------------------- a throwaway CA


class ThrowawayCA:
    """A CA and a server certificate for 127.0.0.1 / localhost, written as PEM files."""

    def __init__(self, directory: Path, name: str = "jit test CA") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        self.ca_file = directory / "ca.pem"
        self.cert_file = directory / "server.pem"
        self.key_file = directory / "server-key.pem"
        self.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        self.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------- HTTP


class HttpReceiver:
    """POST /ingest (JSON lines, HMAC-signed) or /services/collector/event (Splunk HEC). `failing`
    answers 503 without keeping anything; `down()` closes the port."""

    def __init__(self, *, secret: str | None = None, hec_token: str | None = None, port: int | None = None) -> None:
        self.secret, self.hec_token = secret, hec_token
        self.port = port or free_port()
        self.received = Received()
        self.requests: list[dict[str, str]] = []  # headers of each accepted request
        self.failing = False
        self._server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        path = "/services/collector/event" if self.hec_token else "/ingest"
        return f"http://127.0.0.1:{self.port}{path}"

    def _handler(self):
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver.failing:
                    return self._answer(503, b'{"text":"Server is busy","code":9}')
                if receiver.hec_token is not None:
                    if self.headers.get("Authorization") != f"Splunk {receiver.hec_token}":
                        return self._answer(401, b'{"text":"Invalid token","code":4}')
                    rows = receiver._hec_rows(body)
                else:
                    ok = verify_signature(
                        receiver.secret,
                        self.headers.get("X-Jit-Request-Timestamp"),
                        body,
                        self.headers.get("X-Jit-Signature"),
                    )
                    expected = "sha256=" + hmac.new(receiver.secret.encode(), body, "sha256").hexdigest()
                    if not ok or self.headers.get("X-Jit-Body-Signature") != expected:
                        receiver.received.problem("a batch with a bad signature")
                        return self._answer(401, b"bad signature")
                    if self.headers.get("Content-Type") != "application/x-ndjson":
                        receiver.received.problem(f"content type {self.headers.get('Content-Type')}")
                    rows = [json.loads(line) for line in body.decode().splitlines() if line]
                receiver.requests.append(dict(self.headers))
                for row in rows:
                    receiver.received.add(row)
                return self._answer(200, b'{"text":"Success","code":0}')

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def _hec_rows(self, body: bytes) -> list[dict[str, Any]]:
        """HEC's batch format: JSON envelopes back to back; the entry is each one's `event`."""
        text, pos, rows = body.decode(), 0, []
        decoder = json.JSONDecoder()
        self.envelopes = getattr(self, "envelopes", [])
        while pos < len(text):
            while pos < len(text) and text[pos].isspace():
                pos += 1
            if pos >= len(text):
                break
            envelope, pos = decoder.raw_decode(text, pos)
            self.envelopes.append(envelope)
            rows.append(envelope["event"])
        return rows

    def up(self) -> HttpReceiver:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


# ------------------------------------------------------------------------- syslog

_FRAME_LEN = re.compile(rb"^[1-9][0-9]{0,8}$")
_RFC5424 = re.compile(
    r"^<(?P<pri>[0-9]{1,3})>(?P<version>[1-9][0-9]{0,2}) "
    r"(?P<timestamp>-|\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})) "
    r"(?P<hostname>[!-~]{1,255}) (?P<app>[!-~]{1,48}) (?P<procid>[!-~]{1,128}) (?P<msgid>[!-~]{1,32}) "
    r'(?P<sd>-|(?:\[[^ =\]"]{1,32}(?: [^ =\]"]{1,32}="(?:[^"\\\]]|\\["\\\]])*")*\])+)'
    r"(?: (?P<msg>.*))?$",
    re.S,
)


def parse_rfc5424(message: bytes) -> dict[str, Any]:
    """One SYSLOG-MSG by RFC 5424's ABNF (header, structured data, MSG); raises ValueError."""
    m = _RFC5424.match(message.decode("utf-8"))
    if not m:
        raise ValueError(f"not an RFC 5424 message: {message[:120]!r}")
    out: dict[str, Any] = m.groupdict()
    if int(out["pri"]) > 191:
        raise ValueError("PRI out of range")
    out["sd_params"] = dict(re.findall(r' ([^ =\]"]+)="((?:[^"\\\]]|\\["\\\]])*)"', out["sd"]))
    return out


class SyslogReceiver:
    """A collector on TCP (or TLS, RFC 5425) reading octet-counted frames (RFC 6587 §3.4.1)."""

    def __init__(self, *, tls: ssl.SSLContext | None = None, port: int | None = None) -> None:
        self.tls = tls
        self.port = port or free_port()
        self.received = Received()
        self.messages: list[dict[str, Any]] = []
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.connections = 0

    def up(self) -> SyslogReceiver:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(16)
        self._listener = s
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()
        return self

    def down(self) -> None:
        """The collector dies: the port refuses connections and open ones are cut."""
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
        except (OSError, ssl.SSLError):
            conn.close()
            return
        with self._lock:
            if self._listener is None:
                conn.close()
                return
            self._conns.append(conn)
            self.connections += 1
        buf = b""
        try:
            while True:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                buf += chunk
                buf = self._frames(buf)
        except (OSError, ssl.SSLError):
            return
        finally:
            conn.close()

    def _frames(self, buf: bytes) -> bytes:
        while True:
            sp = buf.find(b" ")
            if sp < 0:
                return buf
            length = buf[:sp]
            if not _FRAME_LEN.match(length):
                self.received.problem(f"not octet-counted framing: {buf[:40]!r}")
                return b""
            n = int(length)
            if len(buf) < sp + 1 + n:
                return buf
            message, buf = buf[sp + 1 : sp + 1 + n], buf[sp + 1 + n :]
            try:
                parsed = parse_rfc5424(message)
                row = json.loads(parsed["msg"])
                if parsed["sd_params"].get("seq") != str(row["seq"]):
                    raise ValueError("structured data does not match the message")
            except (ValueError, KeyError, TypeError) as e:
                self.received.problem(str(e))
                continue
            self.messages.append(parsed)
            self.received.add(row)
