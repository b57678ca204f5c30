"""What one client can make a real `jit serve` hold: body bytes, long-polls, idle connections, headers."""

from __future__ import annotations

import select
import socket
import threading
from pathlib import Path

import pytest
import redis as redislib
import requests
from fakes.slack import slash_command
from procs import Stack, wait_until
from support import INTROSPECTION_TOKEN, WEB_TOKEN

from bot.store import keys

PER_PIPELINE = 6
MB = 1024 * 1024


@pytest.fixture(scope="module")
def stack():
    env = {
        "JIT_MAX_LONG_POLLS_PER_PIPELINE": str(PER_PIPELINE),
        "JIT_INTROSPECTION_TOKENS": f"secrets-api={INTROSPECTION_TOKEN}",
    }
    with Stack(extra_env=env) as s:
        s.serve(workers=1)
        yield s


# ------------------------------------------------------------------------ memory of the workers


def worker_pids(stack: Stack) -> list[int]:
    master = stack.procs[0].popen.pid
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    assert children, "gunicorn has no workers"
    return [int(p) for p in children]


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


class PeakMemory:
    """The growth of the workers' resident memory at its peak (VmHWM, reset first) during a block."""

    def __init__(self, stack: Stack) -> None:
        self.pids = worker_pids(stack)

    def __enter__(self) -> PeakMemory:
        self.before = {}
        for pid in self.pids:
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset the peak to the current RSS
            self.before[pid] = _status_kb(pid, "VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        self.grew_kb = max(_status_kb(pid, "VmHWM") - self.before[pid] for pid in self.pids)


# ------------------------------------------------------------------------ a hostile client


def _answer(sock: socket.socket, timeout: float) -> int | None:
    """The status of the response on `sock`, or None when none came within `timeout`."""
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n" not in data:
            piece = sock.recv(4096)
            if not piece:
                break
            data += piece
    except (TimeoutError, ConnectionResetError):
        pass
    return int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None


def stream_body(
    port: int, framing: str, path: str = "/slack/events", headers: str = "", limit: int = 128 * MB
) -> int | None:
    """POST a form body to `path` without end: as a declared 1.5 GB Content-Length, or chunked.
    Keep sending (up to `limit` bytes) until the server answers; return its status."""
    head = f"POST {path} HTTP/1.1\r\nHost: jit\r\nContent-Type: application/x-www-form-urlencoded\r\n{headers}"
    head += "Content-Length: 1500000000\r\n" if framing == "length" else "Transfer-Encoding: chunked\r\n"
    piece = b"payload=" + b"x" * (MB - 8)
    frame = piece if framing == "length" else f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head.encode() + b"\r\n")
        sent = 0
        while sent < limit:
            if select.select([sock], [], [], 0)[0]:
                break  # the server has answered (or closed): stop sending
            try:
                sock.sendall(frame)
            except OSError:
                break
            sent += len(piece)
        else:
            if framing == "chunked":
                sock.sendall(b"0\r\n\r\n")  # the end: a server reading it all can answer now
        return _answer(sock, timeout=30)


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_huge_unsigned_slack_body_is_refused_without_holding_it(stack, framing):
    # warm up the code paths (imports, first allocations) so that only the body could add memory
    for _ in range(2):
        assert stream_body(stack.port, framing, limit=2 * MB) == 400
    with PeakMemory(stack) as peak:
        status = stream_body(stack.port, framing)
    assert status == 400
    assert peak.grew_kb < 8 * 1024, f"a worker grew by {peak.grew_kb} kB"
    # the server still answers, Slack included
    assert requests.get(stack.url + "/healthz", timeout=10).status_code == 200
    assert stack.slack_post(slash_command("help", "U0LEAD1")).status_code == 200


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_huge_form_on_any_other_endpoint_is_refused_without_holding_it(stack, framing):
    """Every body Flask itself parses (the introspection form) has a cap too."""
    auth = f"Authorization: Bearer {INTROSPECTION_TOKEN}\r\n"
    for _ in range(2):
        assert stream_body(stack.port, framing, "/v1/introspect", auth, limit=2 * MB) == 413
    with PeakMemory(stack) as peak:
        status = stream_body(stack.port, framing, "/v1/introspect", auth)
    assert status == 413
    assert peak.grew_kb < 8 * 1024, f"a worker grew by {peak.grew_kb} kB"
    assert requests.post(
        stack.url + "/v1/introspect",
        data={"token": "x"},
        timeout=10,
        headers={"Authorization": f"Bearer {INTROSPECTION_TOKEN}"},
    ).json() == {"active": False}


# ------------------------------------------------------------------------ long-polls


def ask(stack: Stack) -> str:
    resp = stack.ask("deploy-prod", WEB_TOKEN)
    assert resp.status_code == 201, resp.text
    return resp.json()["id"]


class Polls:
    """Long-polls (`?wait=30`) running in threads; each keeps its response."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.threads: list[threading.Thread] = []
        self.answers: list[requests.Response] = []

    def start(self, rid: str, n: int = 1) -> None:
        for _ in range(n):
            t = threading.Thread(target=lambda: self.answers.append(self.stack.get(rid, WEB_TOKEN, wait=30)))
            t.start()
            self.threads.append(t)

    def join(self) -> list[requests.Response]:
        for t in self.threads:
            t.join(60)
        return self.answers


def test_long_polls_are_bounded_per_request_and_per_pipeline(stack):
    r = redislib.Redis.from_url(stack.redis.url, decode_responses=True)
    open_on = lambda name: r.zcard(name)  # noqa: E731
    a, b, c = ask(stack), ask(stack), ask(stack)
    polls = Polls(stack)

    # a request has at most 4 open at once
    polls.start(a, 4)
    wait_until(lambda: open_on(keys.long_polls_of_request(a)) == 4, message="4 polls on a")
    over = stack.get(a, WEB_TOKEN, wait=30)
    assert over.status_code == 429 and over.json()["error"] == "too_many_long_polls"
    assert 1 <= int(over.headers["Retry-After"]) <= 10

    # the pipeline has at most PER_PIPELINE open over all its requests
    polls.start(b, PER_PIPELINE - 4)
    wait_until(
        lambda: open_on(keys.long_polls_of_pipeline("web-ci")) == PER_PIPELINE,
        message="pipeline full",
    )
    over = stack.get(c, WEB_TOKEN, wait=30)
    assert over.status_code == 429 and "Retry-After" in over.headers
    assert stack.get(c, WEB_TOKEN).status_code == 200  # a plain read is no long-poll

    # a poll that ends frees its place at once
    assert (
        requests.delete(
            f"{stack.url}/v1/requests/{a}",
            headers={"Authorization": f"Bearer {stack.follow_token(a, WEB_TOKEN)}"},
            timeout=10,
        ).status_code
        == 200
    )
    wait_until(
        lambda: open_on(keys.long_polls_of_pipeline("web-ci")) == PER_PIPELINE - 4,
        message="a's polls end",
    )
    polls.start(c)
    wait_until(lambda: open_on(keys.long_polls_of_request(c)) == 1, message="poll on c")
    for rid in (b, c):
        requests.delete(
            f"{stack.url}/v1/requests/{rid}",
            headers={"Authorization": f"Bearer {stack.follow_token(rid, WEB_TOKEN)}"},
            timeout=10,
        )
    answers = polls.join()
    assert len(answers) == PER_PIPELINE + 1 and all(x.status_code == 200 for x in answers)
    assert {x.json()["status"] for x in answers} == {"cancelled"}
    assert open_on(keys.long_polls_of_pipeline("web-ci")) == 0


# ------------------------------------------------------------------------ connections and headers


def hangs_up(sock: socket.socket, within: float = 30) -> bool:
    """Whether the server closes `sock` (end of stream) within `within` seconds; it used to keep an
    idle connection for 75 s."""
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    return True


def test_idle_keep_alive_connection_is_closed_within_seconds(stack):
    with socket.create_connection(("127.0.0.1", stack.port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: jit\r\n\r\n")
        assert _answer(sock, timeout=10) == 200
        assert hangs_up(sock)  # then silence: the server hangs up instead of holding on


def test_client_that_never_finishes_its_headers_is_dropped(stack):
    with socket.create_connection(("127.0.0.1", stack.port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: jit\r\n")  # the headers never end
        assert hangs_up(sock)


def raw_status(port: int, request: bytes) -> int | None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        return _answer(sock, timeout=10)


def test_oversized_request_line_and_headers_are_refused(stack):
    assert raw_status(stack.port, b"GET /healthz?" + b"q" * 4000 + b" HTTP/1.1\r\nHost: jit\r\n\r\n") in (400, 414)
    many = b"".join(b"X-Pad-%d: 1\r\n" % i for i in range(40))
    assert raw_status(stack.port, b"GET /healthz HTTP/1.1\r\nHost: jit\r\n" + many + b"\r\n") in (
        400,
        431,
    )
    huge = b"X-Pad: " + b"x" * 9000 + b"\r\n"
    assert raw_status(stack.port, b"GET /healthz HTTP/1.1\r\nHost: jit\r\n" + huge + b"\r\n") in (
        400,
        431,
    )
    # an OIDC-sized bearer token still fits
    token = "ey" + "a" * 3000 + ".b.c"
    ok = requests.get(stack.url + "/v1/requests/x", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert ok.status_code in (401, 404)
