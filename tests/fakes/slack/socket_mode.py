"""Slack's side of Socket Mode: a local WebSocket server that pushes envelopes and records acks."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import itertools
import json
import secrets
import socket as socketlib
import socketserver
import struct
import threading
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from .wire import JSON, Body, Reply, bearer_token, error_body

if TYPE_CHECKING:
    from .web_api import SlackFake


class SocketModeServer:
    """Slack's side of Socket Mode, on a local stdlib WebSocket server (RFC 6455).

    Started with :meth:`SlackFake.socket_mode`. ``apps.connections.open`` (called with the
    app-level ``xapp-`` token) hands out ``ws://127.0.0.1:PORT/link/?ticket=…`` URLs; each
    connection gets Slack's ``hello``, answers pings, and records the app's acks
    (``{"envelope_id", "payload"?}``). Envelopes go round-robin over open connections, as
    Slack spreads them over an app's sockets::

        sm = fake.socket_mode("xapp-test")
        ...                                   # the app connects
        sm.wait_connected()
        eid = sm.send_built(block_action("jit_approve", rid, "U1", message_ts=ts))
        ack = sm.wait_ack(eid)                # {"envelope_id": eid} (+ "payload")
    """

    GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, fake: SlackFake, app_token: str) -> None:
        self.fake = fake
        self.app_token = app_token
        self._cond = threading.Condition()
        self._conns: list[_WsConn] = []
        self._acks: dict[str, list[dict[str, Any]]] = {}
        self._sent: list[dict[str, Any]] = []
        self._tickets: set[str] = set()
        self._rr = itertools.count()
        self.connections_opened = 0  # successful WebSocket handshakes
        server = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                server._serve(self.request)

        class TCP(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._tcp = TCP(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._tcp.serve_forever,
            name="slackfake-ws",
            kwargs={"poll_interval": 0.05},
            daemon=True,
        )
        self._thread.start()

    # ---- Slack's Web API side ---------------------------------------------------

    def _open(self, headers: dict[str, str]) -> Reply:
        token = bearer_token(headers)
        if not token:
            return Reply(200, error_body("not_authed"))
        if not token.startswith("xapp-"):
            return Reply(200, error_body("not_allowed_token_type"))
        if not hmac.compare_digest(token, self.app_token):
            return Reply(200, error_body("invalid_auth"))
        ticket = secrets.token_hex(16)
        with self._cond:
            self._tickets.add(ticket)
        host, port = self._tcp.server_address[:2]
        return Reply(
            200,
            {
                "ok": True,
                "url": f"ws://{host}:{port}/link/?ticket={ticket}&app_id={self.fake.app_id}",
            },
        )

    # ---- test API -----------------------------------------------------------------

    def connected(self) -> int:
        """How many WebSocket connections are open now."""
        with self._cond:
            return sum(1 for c in self._conns if c.open)

    def wait_connected(self, n: int = 1, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(1 for c in self._conns if c.open) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"fewer than {n} Socket Mode connection(s) after {timeout}s")
                self._cond.wait(left)

    def send(
        self,
        type_: str,
        payload: dict[str, Any],
        *,
        accepts_response_payload: bool | None = None,
        envelope_id: str | None = None,
        retry_attempt: int | None = None,
    ) -> str:
        """Push one envelope to the next open connection; returns its ``envelope_id``."""
        eid = envelope_id or f"{secrets.token_hex(4)}-{secrets.token_hex(2)}-{secrets.token_hex(6)}"
        if accepts_response_payload is None:
            accepts_response_payload = type_ == "slash_commands" or (
                type_ == "interactive" and payload.get("type") == "view_submission"
            )
        env: dict[str, Any] = {
            "envelope_id": eid,
            "payload": payload,
            "type": type_,
            "accepts_response_payload": accepts_response_payload,
        }
        if type_ == "events_api":
            env["retry_attempt"] = retry_attempt or 0
            env["retry_reason"] = "timeout" if retry_attempt else ""
        with self._cond:
            open_conns = [c for c in self._conns if c.open]
            if not open_conns:
                raise AssertionError("no open Socket Mode connection")
            conn = open_conns[next(self._rr) % len(open_conns)]
            self._sent.append(copy.deepcopy(env))
        conn.send_text(json.dumps(env))
        return eid

    def send_built(self, built: Body, **kw: Any) -> str:
        """Send what a builder in ``payloads`` made for HTTP (``block_action(...)``, ``slash_command(...)``,
        ``view_submission(...)``, ``event_callback(...)``) as the matching envelope."""
        type_, payload = envelope_payload(built)
        return self.send(type_, payload, **kw)

    def wait_ack(self, envelope_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The app's (first) ack for an envelope."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._acks.get(envelope_id):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no ack for envelope {envelope_id} within {timeout}s")
                self._cond.wait(left)
            return copy.deepcopy(self._acks[envelope_id][0])

    def acks(self, envelope_id: str) -> list[dict[str, Any]]:
        with self._cond:
            return copy.deepcopy(self._acks.get(envelope_id, []))

    def sent(self) -> list[dict[str, Any]]:
        with self._cond:
            return copy.deepcopy(self._sent)

    def disconnect_all(self) -> None:
        """Close every connection (as Slack does on deploys); the app should reconnect."""
        with self._cond:
            conns = list(self._conns)
        for c in conns:
            c.close()

    def stop(self) -> None:
        self.disconnect_all()
        self._tcp.shutdown()
        self._tcp.server_close()
        self._thread.join(timeout=5)

    # ---- WebSocket server ---------------------------------------------------------

    def _serve(self, sock: Any) -> None:
        sock.setsockopt(socketlib.IPPROTO_TCP, socketlib.TCP_NODELAY, 1)
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = sock.recv(4096)
            if not chunk:
                return
            raw += chunk
            if len(raw) > 65536:
                return
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else ""
        hdrs = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            hdrs[k.strip().lower()] = v.strip()
        ticket = parse_qs(urlsplit(path).query).get("ticket", [""])[0]
        with self._cond:
            valid = ticket in self._tickets
            self._tickets.discard(ticket)  # one connection per ticket, as Slack's URLs
        key = hdrs.get("sec-websocket-key", "")
        if not valid or hdrs.get("upgrade", "").lower() != "websocket" or not key:
            sock.sendall(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        accept = base64.b64encode(hashlib.sha1((key + self.GUID).encode()).digest()).decode()
        sock.sendall(
            (
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )
        conn = _WsConn(sock, rest)
        with self._cond:
            self._conns.append(conn)
            self.connections_opened += 1
            self._cond.notify_all()
        hello = {
            "type": "hello",
            "num_connections": self.connected(),
            "debug_info": {
                "host": "slackfake",
                "build_number": 1,
                "approximate_connection_time": 3600,
            },
            "connection_info": {"app_id": self.fake.app_id},
        }
        try:
            conn.send_text(json.dumps(hello))
            while conn.open:
                frame = conn.read_frame()
                if frame is None:
                    break
                opcode, data = frame
                if opcode == 0x9:  # ping -> pong with the same payload
                    conn.send_frame(0xA, data)
                elif opcode == 0x8:
                    conn.send_frame(0x8, data[:2])
                    break
                elif opcode == 0x1:
                    try:
                        ack = json.loads(data.decode("utf-8"))
                    except ValueError:
                        continue
                    if isinstance(ack, dict) and ack.get("envelope_id"):
                        with self._cond:
                            self._acks.setdefault(str(ack["envelope_id"]), []).append(ack)
                            self._cond.notify_all()
        except OSError:
            pass
        finally:
            conn.close()
            with self._cond:
                self._cond.notify_all()


class _WsConn:
    """One server-side WebSocket: unmasked frames out, masked frames in."""

    def __init__(self, sock: Any, buffered: bytes = b"") -> None:
        self.sock = sock
        self.buf = buffered
        self.open = True
        self._send_lock = threading.Lock()

    def _read(self, n: int) -> bytes | None:
        while len(self.buf) < n:
            try:
                chunk = self.sock.recv(65536)
            except OSError:
                return None
            if not chunk:
                return None
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self) -> tuple[int, bytes] | None:
        """One whole message (continuation frames joined): (opcode, payload)."""
        opcode, message = None, b""
        while True:
            head = self._read(2)
            if head is None:
                return None
            fin, op = head[0] & 0x80, head[0] & 0x0F
            masked, length = head[1] & 0x80, head[1] & 0x7F
            if length == 126:
                ext = self._read(2)
                if ext is None:
                    return None
                length = struct.unpack("!H", ext)[0]
            elif length == 127:
                ext = self._read(8)
                if ext is None:
                    return None
                length = struct.unpack("!Q", ext)[0]
            mask = self._read(4) if masked else b"\0\0\0\0"
            data = self._read(length) if length else b""
            if mask is None or data is None:
                return None
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
            if op >= 0x8:  # control frames may arrive between fragments
                return op, data
            if op != 0:
                opcode = op
            message += data
            if fin:
                return opcode or 0x1, message

    def send_frame(self, opcode: int, data: bytes) -> None:
        n = len(data)
        if n < 126:
            head = bytes([0x80 | opcode, n])
        elif n < 65536:
            head = bytes([0x80 | opcode, 126]) + struct.pack("!H", n)
        else:
            head = bytes([0x80 | opcode, 127]) + struct.pack("!Q", n)
        with self._send_lock:
            if not self.open:
                raise OSError("connection closed")
            self.sock.sendall(head + data)

    def send_text(self, text: str) -> None:
        self.send_frame(0x1, text.encode("utf-8"))

    def close(self) -> None:
        with self._send_lock:
            if not self.open:
                return
            self.open = False
            try:
                self.sock.sendall(bytes([0x88, 2]) + (1001).to_bytes(2, "big"))
            except OSError:
                pass
            try:
                self.sock.close()
            except OSError:
                pass


def envelope_payload(built: Body) -> tuple[str, dict[str, Any]]:
    """(envelope type, payload) for what a builder in ``payloads`` made for HTTP: Socket Mode carries
    the same content as JSON (interactions: the ``payload`` object; slash commands: the form
    fields; Events API: the ``event_callback`` body)."""
    body, ctype = built
    if ctype == JSON:
        return "events_api", json.loads(body)
    form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8"), keep_blank_values=True).items()}
    if "payload" in form:
        return "interactive", json.loads(form["payload"])
    return "slash_commands", form
