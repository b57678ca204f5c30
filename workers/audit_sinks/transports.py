"""The three ways out: an HTTP POST (plain JSON lines or Splunk HEC), syslog over TCP or TLS, a file.

`deliver(entries)` returns once the sink has taken the batch — a 2xx (and HEC's `code: 0`), bytes
written on a connection the collector still holds open, bytes appended and fsynced — and raises
SinkError otherwise. A SinkError names a status or an error class, never a URL with its token, a
header or a body.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import select
import socket
import ssl
import time
from typing import Protocol

import requests

from bot.core.audit_sinks import FileSink, HttpSink, SyslogSink
from bot.store.audit import AuditEntry
from workers.audit_sinks.frames import hec_events, json_lines, octet_counted, rfc5424, this_host
from workers.backends.webhook import sign

#: After writing to a syslog collector, how long to watch the connection for the collector
#: closing it on us (it never writes to us: anything readable is its FIN, RST or close_notify).
CONFIRM_S = 0.05


class SinkError(Exception):
    """The sink did not take the batch; it is retried from the cursor."""


class Transport(Protocol):
    def deliver(self, entries: list[AuditEntry]) -> None: ...

    def close(self) -> None: ...


# ------------------------------------------------------------------------- http


class HttpTransport:
    """POST one batch per call: JSON lines signed like the webhook backend (X-Jit-Signature over
    `v0:{timestamp}:{body}`, plus X-Jit-Body-Signature over the body alone for receivers that only
    check that), or Splunk HEC envelopes with `Authorization: Splunk <token>`. Certificates are
    verified (system store or `ca_file`); redirects are failures."""

    def __init__(self, cfg: HttpSink) -> None:
        self.cfg = cfg
        self.session = requests.Session()
        self.host = this_host()

    def _request(self, entries: list[AuditEntry]) -> tuple[bytes, dict[str, str]]:
        cfg = self.cfg
        headers = {k: v.get_secret_value() for k, v in cfg.headers.items()}
        headers["User-Agent"] = "jit-audit-sink"
        headers["X-Jit-Event"] = "audit"
        headers["X-Jit-Audit-Seq"] = f"{entries[0].seq}-{entries[-1].seq}"
        if cfg.hec is not None:
            body = hec_events(entries, cfg.hec, self.host)
            headers["Authorization"] = f"Splunk {cfg.hec.token.get_secret_value()}"
            headers["Content-Type"] = "application/json"
        else:
            body = json_lines(entries)
            headers["Content-Type"] = "application/x-ndjson"
        if cfg.secret is not None:
            secret = cfg.secret.get_secret_value()
            ts = str(int(time.time()))
            headers["X-Jit-Request-Timestamp"] = ts
            headers["X-Jit-Signature"] = sign(secret, ts, body)
            headers["X-Jit-Body-Signature"] = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        return body, headers

    def deliver(self, entries: list[AuditEntry]) -> None:
        body, headers = self._request(entries)
        try:
            resp = self.session.post(
                self.cfg.url,
                data=body,
                headers=headers,
                timeout=self.cfg.timeout,
                verify=self.cfg.ca_file or True,
                allow_redirects=False,
            )
        except requests.RequestException as e:
            raise SinkError(f"POST failed: {type(e).__name__}") from None
        if not 200 <= resp.status_code < 300:
            raise SinkError(f"POST answered {resp.status_code}")
        if self.cfg.hec is not None:
            try:
                code = resp.json().get("code", 0)
            except (ValueError, AttributeError):
                code = 0  # a 2xx without HEC's JSON: a proxy in front; the status is the answer
            if code != 0:
                raise SinkError(f"HEC answered code {code}")

    def close(self) -> None:
        self.session.close()


# ------------------------------------------------------------------------- syslog


class SyslogTransport:
    """RFC 5424 messages, octet-counted, on one long-lived TCP (or TLS, RFC 5425) connection.

    Syslog has no acknowledgement: a batch counts as taken when it was written and the collector
    kept the connection open for CONFIRM_S afterwards. A collector that went away is noticed
    before the next write (its FIN, RST or close_notify makes the socket readable), so nothing is
    written into a dead connection and lost; the batch is sent again on a new one."""

    def __init__(self, cfg: SyslogSink) -> None:
        self.cfg = cfg
        self.sock: socket.socket | None = None
        self.hostname = cfg.hostname or this_host()
        self.procid = str(os.getpid())
        self._tls: ssl.SSLContext | None = None

    def _tls_context(self) -> ssl.SSLContext:
        """Made at the first connection, so a CA file that cannot be read is a failure of this
        sink (retried, alerted), not of the worker."""
        if self._tls is None:
            cfg = self.cfg
            try:
                ctx = ssl.create_default_context(cafile=cfg.ca_file)
                ctx.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 5425 §4.2 and current practice
                if cfg.client_cert:
                    ctx.load_cert_chain(cfg.client_cert, cfg.client_key)
            except (OSError, ssl.SSLError) as e:
                raise SinkError(f"TLS setup failed: {type(e).__name__}") from None
            self._tls = ctx
        return self._tls

    def _connect(self) -> socket.socket:
        tls = self._tls_context() if self.cfg.tls else None
        addr = (self.cfg.host, self.cfg.effective_port)
        try:
            sock = socket.create_connection(addr, timeout=self.cfg.timeout)
        except OSError as e:
            raise SinkError(f"cannot connect: {type(e).__name__}") from None
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_hostname=self.cfg.server_name or self.cfg.host)
            except (OSError, ssl.SSLError) as e:
                sock.close()
                raise SinkError(f"TLS handshake failed: {type(e).__name__}") from None
        sock.settimeout(self.cfg.timeout)
        return sock

    def _closed_by_peer(self, wait: float) -> bool:
        """Did the collector close the connection (watching for `wait` seconds)?"""
        sock = self.sock
        if sock is None:
            return True
        deadline = time.monotonic() + wait
        while True:
            left = max(0.0, deadline - time.monotonic())
            readable, _, _ = select.select([sock], [], [], left)
            if readable:
                sock.setblocking(False)
                try:
                    data = sock.recv(4096)
                except (ssl.SSLWantReadError, BlockingIOError):
                    data = None  # a TLS record without data (a session ticket): still open
                except OSError:
                    return True
                finally:
                    sock.settimeout(self.cfg.timeout)
                if data == b"":
                    return True
            if left <= 0:
                return False

    def _message(self, e: AuditEntry) -> bytes:
        cfg = self.cfg
        return rfc5424(e, facility=cfg.facility, hostname=self.hostname, app_name=cfg.app_name, procid=self.procid)

    def deliver(self, entries: list[AuditEntry]) -> None:
        if self.sock is not None and self._closed_by_peer(0):
            self.close()
        if self.sock is None:
            self.sock = self._connect()
        frames = b"".join(octet_counted(self._message(e)) for e in entries)
        try:
            self.sock.sendall(frames)
        except OSError as e:
            self.close()
            raise SinkError(f"write failed: {type(e).__name__}") from None
        if self._closed_by_peer(CONFIRM_S):
            self.close()
            raise SinkError("the collector closed the connection")

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None


# ------------------------------------------------------------------------- file


class FileTransport:
    """JSON lines appended to a path, opened anew for each batch (rotation by rename just works),
    fsynced before the batch counts as taken."""

    def __init__(self, cfg: FileSink) -> None:
        self.cfg = cfg

    def deliver(self, entries: list[AuditEntry]) -> None:
        data = json_lines(entries)
        try:
            fd = os.open(self.cfg.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if self.cfg.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise SinkError(f"append failed: {type(e).__name__} ({e.strerror})") from None

    def close(self) -> None:
        pass


def open_transport(cfg: HttpSink | SyslogSink | FileSink) -> Transport:
    if isinstance(cfg, HttpSink):
        return HttpTransport(cfg)
    if isinstance(cfg, SyslogSink):
        return SyslogTransport(cfg)
    return FileTransport(cfg)
