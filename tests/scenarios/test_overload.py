"""A flood of creates against a real `jit serve`: what it cannot take now it refuses at once with
503 + Retry-After, what it accepts succeeds, nothing refused is half-created, and a refused request
retried with its Idempotency-Key after Retry-After is created once (outcomes only, no timings)."""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import redis as redislib
import requests
from procs import Stack
from support import WEB_TOKEN

from bot.store import keys

AT_ONCE = 40


def test_a_flood_gets_quick_refusals_with_retry_after_and_nothing_half_created():
    env = {"JIT_RATE_LIMIT": "0", "JIT_HOOK_MAX_IN_FLIGHT": "2"}
    with Stack(extra_env=env) as stack:
        stack.serve(workers=1)
        r = redislib.Redis.from_url(stack.redis.url, decode_responses=True)
        session = requests.Session()
        session.mount("http://", requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=AT_ONCE))

        def ask(key: str) -> requests.Response:
            return session.post(
                f"{stack.url}/v1/requests",
                timeout=60,
                json={"action": "read-secret", "reason": f"flood {key}"},
                headers={"Authorization": f"Bearer {WEB_TOKEN}", "Idempotency-Key": key},
            )

        answers: dict[str, requests.Response] = {}
        with ThreadPoolExecutor(AT_ONCE) as pool:
            for wave in range(10):  # waves until the server has been over its bound at least once
                keys_ = [f"w{wave}-{i}" for i in range(AT_ONCE)]
                answers.update(zip(keys_, pool.map(ask, keys_), strict=True))
                if any(a.status_code == 503 for a in answers.values()):
                    break
        refused = {k: a for k, a in answers.items() if a.status_code == 503}
        created = {k: a for k, a in answers.items() if a.status_code == 201}
        assert refused, "40 at once against an in-flight bound of 2 were never refused"
        assert len(refused) + len(created) == len(answers), {a.status_code for a in answers.values()}
        for a in refused.values():
            assert a.json()["error"] == "overloaded" and int(a.headers["Retry-After"]) >= 1

        # Nothing refused was stored, everything accepted was, whole.
        ids = {a.json()["id"] for a in created.values()}
        assert set(r.zrange(keys.all_requests(), 0, -1)) == ids
        for rid in ids:
            assert r.hget(keys.request(rid), "status") == "pending"
        assert len(list(r.scan_iter(keys.idempotency("*", "*")))) == len(created)

        # A refused request retried with its key after Retry-After is created, once.
        time.sleep(max(int(a.headers["Retry-After"]) for a in refused.values()))
        for key in refused:
            again = ask(key)
            assert again.status_code == 201, again.text
            ids.add(again.json()["id"])
        assert r.zcard(keys.all_requests()) == len(answers) == len(ids)


def _trickle(port: int, path: str, headers: dict[str, str]) -> socket.socket:
    """A request whose headers arrive but whose body (100 bytes declared) never does: one byte, then nothing."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: jit\r\nContent-Length: 100\r\n{head}\r\n{{".encode())
    return sock


def _status_then_closed(sock: socket.socket) -> tuple[int | None, bool]:
    """The response's status, and whether the server then closed the connection."""
    data = b""
    try:
        while piece := sock.recv(4096):
            data += piece
        closed = True
    except TimeoutError:
        closed = False
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else None
    return status, closed


def test_bodies_trickled_past_their_deadline_are_cut_off_and_hold_no_place():
    """A pipeline (it holds a token) trickling bodies held its places in the in-flight bound for as
    long as it liked, and every other pipeline was refused meanwhile. The body now has a deadline:
    408, the connection closed, the place given back, nothing stored."""
    env = {
        "JIT_RATE_LIMIT": "0",
        "JIT_HOOK_MAX_IN_FLIGHT": "2",
        "JIT_HOOK_LATENCY_BUDGET_MS": "0",
        "JIT_HTTP_BODY_TIMEOUT_S": "1",
    }
    with Stack(extra_env=env) as stack:
        stack.serve(workers=1)
        r = redislib.Redis.from_url(stack.redis.url, decode_responses=True)
        hook = {"Authorization": f"Bearer {WEB_TOKEN}", "Content-Type": "application/json"}
        slow = [_trickle(stack.port, "/v1/requests", hook) for _ in range(2)]  # both places
        slack = _trickle(stack.port, "/slack/events", {"Content-Type": "application/x-www-form-urlencoded"})
        for sock in [*slow, slack]:
            with sock:
                assert _status_then_closed(sock) == (408, True)
        assert stack.ask("read-secret", WEB_TOKEN, reason="after the tricklers").status_code == 201
        assert r.zcard(keys.all_requests()) == 1  # only that one
