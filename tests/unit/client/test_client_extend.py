"""client/jit_client.py `extend`: more time for a grant; a retry after a lost answer never extends twice."""

from __future__ import annotations

import io

import pytest

import jit_client as client

URL = "https://jit.example.com"
BEFORE = {"id": "req_1", "status": "active", "expires_at": "2026-03-01T10:10:00.000Z"}
AFTER = {**BEFORE, "expires_at": "2026-03-01T10:25:00.000Z"}


class Server:
    def __init__(self, script):
        self.script, self.calls = list(script), []

    def __call__(self, method, url, **kw):
        self.calls.append((method, url.removeprefix(URL), kw))
        answer = self.script.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def run(argv, script, env=None):
    t = [0.0]
    server = Server(script)
    env = {"JIT_URL": URL, **(env or {})}
    args = client.build_parser(env).parse_args(["extend", *argv])
    out, err = io.StringIO(), io.StringIO()

    def sleep(s):
        t[0] += s

    runner = client.Runner(args, env, out, err, sleep=sleep, clock=lambda: t[0], http=server)
    return runner.extend(), server, err.getvalue()


def test_an_extension_is_asked_with_the_request_token():
    code, server, err = run(
        ["req_1", "--ttl", "15m", "--reason", "slow"], [(200, BEFORE), (200, AFTER)], {"JIT_REQUEST_TOKEN": "rt"}
    )
    assert code == 0 and "now expires 2026-03-01T10:25:00.000Z" in err
    method, path, kw = server.calls[1]
    assert (method, path) == ("POST", "/v1/requests/req_1/extend")
    assert kw["body"] == {"reason": "slow", "ttl": 900} and kw["token"] == "rt"


def test_waiting_for_approval_is_said():
    code, _, err = run(["req_1", "--token", "rt"], [(200, BEFORE), (202, BEFORE)])
    assert code == 0 and "waits for approval" in err


def test_a_lost_answer_is_checked_before_asking_again():
    code, server, _ = run(
        ["req_1", "--token", "rt", "--ttl", "15m"],
        [(200, BEFORE), client.Transient("connection reset"), (200, AFTER)],
    )
    assert code == 0
    assert [c[0] for c in server.calls] == ["GET", "POST", "GET"]  # it landed: not sent twice
    code, server, _ = run(
        ["req_1", "--token", "rt", "--ttl", "15m"],
        [(200, BEFORE), client.Transient("HTTP 503"), (200, BEFORE), (200, AFTER)],
    )
    assert code == 0 and [c[0] for c in server.calls] == ["GET", "POST", "GET", "POST"]


def test_refusals_and_usage():
    refused = client.ApiError(422, "over_max_total", "longer than extend.max_total")
    with pytest.raises(client.ClientError, match="cannot extend req_1: longer than extend.max_total") as e:
        run(["req_1", "--token", "rt"], [(200, BEFORE), refused])
    assert e.value.code == client.EXIT_ERROR
    with pytest.raises(client.UsageError, match="request ID"):
        run([], [])
    err = io.StringIO()
    assert client.main(["extend", "--token", "rt"], env={"JIT_URL": URL}, stderr=err) == client.EXIT_USAGE
