"""Messages jit owes someone are never lost: break-glass alerts and audit-channel notices go
through the due queue, survive Slack outages, and say when they are late; a post is never sent
twice because a connection broke."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from test_break_glass import ask, rules  # noqa: F401 (rules is a fixture)

from bot.core.clock import now_ms
from bot.store import keys


def security_alerts(slack):
    return [c for c in slack.calls("chat.postMessage") if c.params["channel"] == "C0SECURITY"]


def drain_for(jit, seconds: float, until=None):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        jit.work()
        if until is not None and until():
            return True
        time.sleep(0.1)
    return False


def test_a_break_glass_alert_waits_out_a_slack_outage_and_says_it_is_late(rules, jit, slack):  # noqa: F811
    slack.fail_with(503, methods="chat.postMessage")  # Slack is down
    rid = ask(jit)
    jit.rt.decisions.break_glass(rid, "U0ONCALL", "INC-7: restore payments now")
    drain_for(jit, 4)
    assert jit.status(rid).get_json()["status"] == "active"  # the grant does not wait for Slack
    assert security_alerts(slack) and not slack.messages("C0SECURITY")  # tried, refused
    # retried with backoff, never given up
    assert jit.rt.redis.zscore(keys.due(), f"bgalert:{rid}") is not None
    assert jit.rt.redis.zscore(keys.undelivered_alerts(), f"bgalert:{rid}") is not None
    # an undelivered alert past its bound is visible: metrics and the auditors' App Home
    jit.rt.redis.zadd(keys.undelivered_alerts(), {f"bgalert:{rid}": now_ms() - 10 * 60_000})
    jit.rt.redis.hset(keys.request(rid), "decided_ms", now_ms() - 10 * 60_000)
    assert jit.rt.notices.undelivered()
    metrics = jit.http.get("/metrics").get_data(as_text=True)
    assert "jit_undelivered_alerts 1" in metrics

    slack.clear_faults()  # Slack is back
    jit.rt.redis.zadd(keys.due(), {f"bgalert:{rid}": now_ms()})  # its backoff ran out
    assert drain_for(jit, 30, until=lambda: slack.messages("C0SECURITY")), "the alert never went out"
    (posted,) = slack.messages("C0SECURITY").values()
    assert "Break glass" in posted["text"] and "Delivered late" in posted["text"]
    assert not jit.rt.notices.undelivered(older_than_ms=0)
    assert "jit_undelivered_alerts 0" in jit.http.get("/metrics").get_data(as_text=True)


def test_policy_notices_wait_out_a_slack_outage(jit, slack, policy_file):
    slack.fail_with(503, methods="chat.postMessage")
    jit.rt.post_audit_notice(":scroll: policy loaded")
    drain_for(jit, 3)
    assert not slack.messages()
    slack.clear_faults()
    for m in jit.rt.redis.zrange(keys.due(), 0, -1):
        if m.startswith("notice:"):
            jit.rt.redis.zadd(keys.due(), {m: now_ms()})
    assert drain_for(jit, 30, until=lambda: any("policy loaded" in m["text"] for m in slack.messages().values()))
    assert not [m for m in jit.rt.redis.zrange(keys.due(), 0, -1) if m.startswith("notice:")]


def test_a_refusal_that_could_not_go_out_within_a_minute_is_dropped(jit, slack):
    member = jit.rt.notices.tell("C0PROD", "U0X", "You are not an approver", within_ms=-1)
    jit.work()
    assert not slack.ephemerals(user="U0X")
    assert jit.rt.redis.zscore(keys.due(), member) is None


class ResettingSlack:
    """Reads one request, then drops the connection without answering (Slack may have posted)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.requests = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/api/"

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if data:
                    self.requests += 1
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    def close(self) -> None:
        self.sock.close()


def test_a_post_whose_connection_was_reset_is_not_sent_again_by_the_client(rt):
    server = ResettingSlack()
    try:
        client = type(rt.slack)(token="xoxb-x", base_url=server.url, timeout=5, retry_handlers=[])
        rt.__dict__["slack"] = client
        assert rt.slack.retry_handlers == []
        from bot.runtime import Runtime

        assert Runtime.slack.func(rt).retry_handlers == []  # the product's own client
        with pytest.raises(Exception):  # noqa: B017 - any connection error will do
            rt.slack.chat_postMessage(channel="C0PROD", text="hello")
        time.sleep(0.2)
        assert server.requests == 1  # sent once; what happens next is the due queue's decision
    finally:
        server.close()
