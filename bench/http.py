"""A small asyncio HTTP/1.1 keep-alive client: cheap enough per request to load a server from
the same two cores without the client becoming the bottleneck (requests/urllib cost ~10× more).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def retry_after_s(self) -> float:
        """Seconds a 503 or 429 asks to wait before trying again (1 when it does not say)."""
        for k, v in self.headers.items():
            if k.lower() == "retry-after":
                return float(v)
        return 1.0


class Connection:
    """One keep-alive connection; one request at a time. Reconnects when the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._r: asyncio.StreamReader | None = None
        self._w: asyncio.StreamWriter | None = None

    async def _connect(self) -> None:
        self._r, self._w = await asyncio.open_connection(self.host, self.port, limit=1 << 20)

    async def close(self) -> None:
        if self._w is not None:
            self._w.close()
            try:
                await self._w.wait_closed()
            except (ConnectionError, OSError):
                pass
            self._r = self._w = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
        json_body: Any = None,
    ) -> Response:
        if json_body is not None:
            body = json.dumps(json_body).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        lines = [
            f"{method} {path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            f"Content-Length: {len(body)}",
        ]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        for attempt in (0, 1):
            if self._w is None:
                await self._connect()
            try:
                assert self._w is not None
                self._w.write(raw)
                await self._w.drain()
                return await self._read()
            except (ConnectionError, asyncio.IncompleteReadError, OSError):
                await self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _read(self) -> Response:
        assert self._r is not None
        head = await self._r.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in header_lines:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await self._r.readuntil(b"\r\n")).strip().split(b";")[0], 16)
                if size == 0:
                    await self._r.readuntil(b"\r\n")
                    break
                chunks.append(await self._r.readexactly(size))
                await self._r.readexactly(2)
            body = b"".join(chunks)
        else:
            body = await self._r.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Response(status, headers, body)


class Pool:
    """Connections handed out one request at a time (at most `size` open at once)."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self._free: asyncio.Queue[Connection] = asyncio.Queue()
        self._all = [Connection(host, port) for _ in range(size)]
        for c in self._all:
            self._free.put_nowait(c)

    async def request(self, method: str, path: str, **kw: Any) -> Response:
        conn = await self._free.get()
        try:
            return await conn.request(method, path, **kw)
        finally:
            self._free.put_nowait(conn)

    async def close(self) -> None:
        for c in self._all:
            await c.close()
