"""Tests for the Slack test double: driven by the real slack_sdk / slack_bolt clients."""

from __future__ import annotations

import json
import threading
import time
from urllib.parse import parse_qs

import pytest
from slack_bolt import App
from slack_bolt.request import BoltRequest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier
from slack_sdk.webhook import WebhookClient

from fakes.slack import (
    APP_ID,
    BOT_USER_ID,
    TEAM_ID,
    SlackFake,
    app_home_opened,
    block_action,
    event_callback,
    sign,
    signed,
    slash_command,
    url_verification,
    view_submission,
)

TOKEN = "xoxb-test"
SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


@pytest.fixture
def fake():
    with SlackFake(
        token=TOKEN,
        usergroups={"S0APPROVERS": ["U0ALICE", "U0BOB"]},
        users={
            "U0ALICE": {"name": "alice", "email": "alice@example.com", "real_name": "Alice A"},
            "U0BOB": {"name": "bob", "profile": {"email": "bob@example.com"}},
        },
    ) as f:
        yield f


@pytest.fixture
def client(fake):
    return WebClient(token=TOKEN, base_url=fake.api_url)


def _error(exc: pytest.ExceptionInfo[SlackApiError]) -> str:
    return exc.value.response["error"]


# ---------------------------------------------------------------- Web API


def test_lifecycle_and_api_url():
    fake = SlackFake()
    with pytest.raises(RuntimeError):
        _ = fake.api_url
    with fake:
        assert fake.api_url.startswith("http://127.0.0.1:") and fake.api_url.endswith("/api/")
        assert WebClient(token="xoxb-test", base_url=fake.api_url).auth_test()["ok"]
    with pytest.raises(RuntimeError):
        _ = fake.api_url


def test_auth(fake, client):
    r = client.auth_test()
    assert (r["team_id"], r["user_id"], r["bot_id"]) == (TEAM_ID, BOT_USER_ID, "B0JITBOT")
    with pytest.raises(SlackApiError) as e:
        WebClient(token="xoxb-wrong", base_url=fake.api_url).auth_test()
    assert _error(e) == "invalid_auth"
    with pytest.raises(SlackApiError) as e:
        WebClient(base_url=fake.api_url).chat_postMessage(channel="C1", text="x")
    assert _error(e) == "not_authed"
    assert fake.calls("auth.test")[0].headers["Authorization"] == f"Bearer {TOKEN}"


def test_unknown_method(client):
    with pytest.raises(SlackApiError) as e:
        client.api_call("nope.nothing")
    assert _error(e) == "unknown_method"


def test_post_update_delete_and_state(fake, client):
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Request* pending"}}]
    r1 = client.chat_postMessage(channel="C1", text="pending", blocks=blocks)
    r2 = client.chat_postMessage(channel="C1", text="reply", thread_ts=r1["ts"])
    assert r1["channel"] == "C1" and r1["message"]["blocks"] == blocks
    assert float(r2["ts"]) > float(r1["ts"])
    assert r2["message"]["thread_ts"] == r1["ts"]

    u = client.chat_update(
        channel="C1",
        ts=r1["ts"],
        text="approved",
        blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": "done"}}],
    )
    assert u["ts"] == r1["ts"] and u["text"] == "approved"

    msgs = fake.messages("C1")
    assert list(msgs) == [r1["ts"], r2["ts"]]
    assert msgs[r1["ts"]]["text"] == "approved"
    assert msgs[r1["ts"]]["blocks"][0]["text"]["text"] == "done"
    assert msgs[r1["ts"]]["edited"] == 1
    assert msgs[r2["ts"]]["thread_ts"] == r1["ts"]
    assert fake.messages("C2") == {}

    with pytest.raises(SlackApiError) as e:
        client.chat_update(channel="C1", ts="1.000001", text="x")
    assert _error(e) == "message_not_found"
    with pytest.raises(SlackApiError) as e:
        client.chat_update(channel="C2", ts=r1["ts"], text="x")  # right ts, wrong channel
    assert _error(e) == "message_not_found"

    client.chat_delete(channel="C1", ts=r2["ts"])
    assert list(fake.messages()) == [r1["ts"]]
    with pytest.raises(SlackApiError):
        client.chat_delete(channel="C1", ts=r2["ts"])


def test_post_requires_text_and_channel(client):
    with pytest.raises(SlackApiError) as e:
        client.api_call("chat.postMessage", json={"channel": "C1"})
    assert _error(e) == "no_text"
    with pytest.raises(SlackApiError) as e:
        client.api_call("chat.postMessage", json={"text": "x"})
    assert _error(e) == "channel_not_found"


def test_known_channels_only():
    with SlackFake(channels={"C1"}) as fake:
        client = WebClient(token="xoxb-test", base_url=fake.api_url)
        client.chat_postMessage(channel="C1", text="ok")
        with pytest.raises(SlackApiError) as e:
            client.chat_postMessage(channel="C9", text="no")
        assert _error(e) == "channel_not_found"


def test_form_encoded_bodies_are_parsed(fake, client):
    ts = client.chat_postMessage(channel="C1", text="a")["ts"]
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "via form"}}]
    client.api_call("chat.update", params={"channel": "C1", "ts": ts, "text": "b", "blocks": json.dumps(blocks)})
    assert fake.message(ts)["blocks"] == blocks
    assert fake.calls("chat.update")[0].headers["Content-Type"] == "application/x-www-form-urlencoded"


def test_ts_unique_under_concurrency(fake, client):
    out: list[str] = []

    def post(i: int) -> None:
        out.append(client.chat_postMessage(channel=f"C{i % 3}", text=str(i))["ts"])

    threads = [threading.Thread(target=post, args=(i,)) for i in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(out)) == 30 and len(fake.messages()) == 30


def test_ephemeral(fake, client):
    r = client.chat_postEphemeral(channel="C1", user="U0ALICE", text="only you")
    assert r["message_ts"]
    assert fake.ephemerals(user="U0ALICE")[0]["text"] == "only you"
    assert fake.messages() == {}


def test_dm_via_conversations_open(fake, client):
    ch = client.conversations_open(users="U0ALICE")["channel"]["id"]
    assert ch.startswith("D") and ch == fake.dm_channel("U0ALICE")
    assert client.conversations_open(users=["U0ALICE"])["channel"]["id"] == ch
    r = client.chat_postMessage(channel="U0ALICE", text="hi")  # user id -> DM, like Slack
    assert r["channel"] == ch
    assert fake.messages(ch)[r["ts"]]["text"] == "hi"


def test_usergroups_and_users(fake, client):
    assert client.usergroups_users_list(usergroup="S0APPROVERS")["users"] == ["U0ALICE", "U0BOB"]
    with pytest.raises(SlackApiError) as e:
        client.usergroups_users_list(usergroup="S0NOPE")
    assert _error(e) == "no_such_subteam"
    fake.usergroups["S0APPROVERS"].remove("U0BOB")  # mutable at run time
    assert client.usergroups_users_list(usergroup="S0APPROVERS")["users"] == ["U0ALICE"]

    alice = client.users_info(user="U0ALICE")["user"]
    assert alice["id"] == "U0ALICE" and alice["name"] == "alice"
    assert alice["profile"]["email"] == "alice@example.com" and alice["real_name"] == "Alice A"
    with pytest.raises(SlackApiError) as e:
        client.users_info(user="U0NOBODY")
    assert _error(e) == "user_not_found"
    assert client.users_lookupByEmail(email="BOB@example.com")["user"]["id"] == "U0BOB"
    with pytest.raises(SlackApiError) as e:
        client.users_lookupByEmail(email="x@example.com")
    assert _error(e) == "users_not_found"


def test_views(fake, client):
    modal = {
        "type": "modal",
        "callback_id": "req",
        "title": {"type": "plain_text", "text": "Req"},
        "blocks": [],
        "private_metadata": "m1",
    }
    with pytest.raises(SlackApiError) as e:
        client.api_call("views.open", json={"view": modal})
    assert _error(e) == "invalid_arguments"
    v = client.views_open(trigger_id="123.456.abc", view=modal)["view"]
    assert v["id"].startswith("V") and v["callback_id"] == "req" and v["private_metadata"] == "m1"
    u = client.views_update(view_id=v["id"], view={**modal, "private_metadata": "m2"})["view"]
    assert u["id"] == v["id"] and fake.views()[v["id"]]["private_metadata"] == "m2"
    with pytest.raises(SlackApiError) as e:
        client.views_update(view_id="V404", view=modal)
    assert _error(e) == "not_found"

    home = {
        "type": "home",
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "Home"}}],
    }
    client.views_publish(user_id="U0ALICE", view=home)
    assert fake.home("U0ALICE")["blocks"] == home["blocks"]
    assert fake.home("U0BOB") is None


# ---------------------------------------------------------------- faults


def test_rate_limit_surfaces_as_429(fake, client):
    fake.rate_limit(retry_after=7, times=1, methods="chat.postMessage")
    client.auth_test()  # other methods unaffected
    with pytest.raises(SlackApiError) as e:
        client.chat_postMessage(channel="C1", text="x")
    assert e.value.response.status_code == 429
    assert e.value.response.headers["Retry-After"] == "7"
    assert _error(e) == "ratelimited"
    assert client.chat_postMessage(channel="C1", text="x")["ok"]  # times=1 consumed
    assert fake.stats.rate_limited == 1
    assert fake.calls("chat.postMessage")[0].status == 429


def test_rate_limit_retry_handler_recovers(fake):
    client = WebClient(
        token=TOKEN,
        base_url=fake.api_url,
        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=1)],
    )
    fake.rate_limit(retry_after=1, times=1)
    t0 = time.monotonic()
    assert client.chat_postMessage(channel="C1", text="x")["ok"]
    assert time.monotonic() - t0 >= 1.0
    assert [c.status for c in fake.calls("chat.postMessage")] == [429, 200]


def test_server_errors_until_cleared(fake, client):
    fake.fail_with(503)
    for _ in range(3):
        with pytest.raises(SlackApiError) as e:
            client.chat_postMessage(channel="C1", text="x")
        assert e.value.response.status_code == 503
    fake.clear_faults()
    assert client.chat_postMessage(channel="C1", text="x")["ok"]
    assert fake.stats.failed == 3

    fake.fail_with(500, times=1, methods=["chat.update"], body="<html>oops</html>")
    client.chat_postMessage(channel="C1", text="y")
    with pytest.raises(SlackApiError) as e:
        client.chat_update(channel="C1", ts="1.1", text="z")
    assert e.value.response.status_code == 500


def test_api_error_and_slow(fake, client):
    fake.api_error("plan_upgrade_required", methods="usergroups.users.list", times=1)
    with pytest.raises(SlackApiError) as e:
        client.usergroups_users_list(usergroup="S0APPROVERS")
    assert _error(e) == "plan_upgrade_required"
    assert client.usergroups_users_list(usergroup="S0APPROVERS")["ok"]

    fake.slow(0.3, methods="auth.test")
    t0 = time.monotonic()
    client.auth_test()
    assert time.monotonic() - t0 >= 0.3


def test_channel_rate_limiter(fake, client):
    fake.enforce_channel_rate(per_second=1.0, burst=2)
    client.chat_postMessage(channel="C1", text="1")
    client.chat_postMessage(channel="C1", text="2")
    with pytest.raises(SlackApiError) as e:
        client.chat_postMessage(channel="C1", text="3")
    assert e.value.response.status_code == 429
    assert int(e.value.response.headers["Retry-After"]) >= 1
    client.chat_postMessage(channel="C2", text="other channel is fine")
    assert fake.stats.rate_limited == 1
    assert len(fake.messages("C1")) == 2


# ---------------------------------------------------------------- recording helpers


def test_wait_for_and_dump(fake, client):
    threading.Timer(0.1, lambda: client.chat_postMessage(channel="C9", text="later")).start()
    call = fake.wait_for(lambda c: c.method == "chat.postMessage" and c.params["channel"] == "C9", timeout=3)
    assert call.params["text"] == "later" and call.ok
    assert fake.wait_for("chat.postMessage").method == "chat.postMessage"
    with pytest.raises(AssertionError, match="chat.postMessage"):
        fake.wait_for("chat.update", timeout=0.1)


def test_all_text_and_reset(fake, client):
    client.chat_postMessage(
        channel="C1",
        text="hello",
        blocks=[{"type": "section", "text": {"type": "mrkdwn", "text": "in-block"}}],
    )
    WebhookClient(fake.response_url("k")).send(text="via-response-url")
    text = fake.all_text()
    assert "hello" in text and "in-block" in text and "via-response-url" in text
    assert TOKEN not in text
    fake.rate_limit(times=None)
    fake.reset()
    assert fake.calls() == [] and fake.messages() == {} and fake.stats.requests == 0
    assert client.auth_test()["ok"]  # faults gone too


def test_response_url(fake, client):
    ts = client.chat_postMessage(channel="C1", text="pending")["ts"]
    url = fake.response_url("click1", channel="C1", message_ts=ts)
    assert url.startswith(fake.base_url + "/response/")
    r = WebhookClient(url).send(text="approved", replace_original=True)
    assert r.status_code == 200
    assert fake.responses("click1") == [{"text": "approved", "replace_original": True}]
    assert fake.message(ts)["text"] == "approved"
    WebhookClient(url).send(delete_original=True)
    assert ts not in fake.messages()

    WebhookClient(fake.response_url("unbound")).send(text="eph", response_type="ephemeral")
    assert fake.responses("unbound")[0]["response_type"] == "ephemeral"
    assert fake.calls("response_url")[-1].key == "unbound"


# ---------------------------------------------------------------- Slack -> bot


def test_sign_matches_slack_sdk_verifier():
    body, ctype = slash_command("request prod-db 30m", user_id="U0ALICE")
    headers = sign(SECRET, body, content_type=ctype)
    v = SignatureVerifier(SECRET)
    assert v.is_valid(body, headers["X-Slack-Request-Timestamp"], headers["X-Slack-Signature"])
    assert v.is_valid_request(body, headers)
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    old = sign(SECRET, body, timestamp=int(time.time()) - 600)
    assert not v.is_valid_request(body, old)
    assert not v.is_valid_request(body + b"x", headers)
    assert not SignatureVerifier("other").is_valid_request(body, headers)
    assert sign(SECRET, b"abc", timestamp=1531420618)["X-Slack-Signature"] == (
        "v0=" + SignatureVerifier(SECRET).generate_signature(timestamp="1531420618", body="abc")[3:]
    )


def test_slash_command_fields():
    body, ctype = slash_command("request db 1h", user_id="U0ALICE", response_url="http://r/1", trigger_id="1.2.3")
    form = {k: v[0] for k, v in parse_qs(body.decode(), keep_blank_values=True).items()}
    assert list(form) == [
        "token",
        "team_id",
        "team_domain",
        "channel_id",
        "channel_name",
        "user_id",
        "user_name",
        "command",
        "text",
        "api_app_id",
        "is_enterprise_install",
        "response_url",
        "trigger_id",
    ]
    assert form["text"] == "request db 1h" and form["command"] == "/jit" and form["team_id"] == TEAM_ID
    assert form["response_url"] == "http://r/1" and form["trigger_id"] == "1.2.3"
    assert form["is_enterprise_install"] == "false" and form["api_app_id"] == APP_ID


def test_block_action_shape():
    body, ctype = block_action("approve", "req-42", user_id="U0BOB", channel="C1", message_ts="1700000000.000100")
    assert ctype == "application/x-www-form-urlencoded"
    p = json.loads(parse_qs(body.decode())["payload"][0])
    assert p["type"] == "block_actions"
    assert p["user"] == {"id": "U0BOB", "username": "u0bob", "name": "u0bob", "team_id": TEAM_ID}
    assert p["container"] == {
        "type": "message",
        "message_ts": "1700000000.000100",
        "channel_id": "C1",
        "is_ephemeral": False,
    }
    assert p["team"]["id"] == TEAM_ID and p["channel"]["id"] == "C1" and p["message"]["ts"] == "1700000000.000100"
    (a,) = p["actions"]
    assert (a["action_id"], a["value"], a["type"], a["text"]["type"]) == (
        "approve",
        "req-42",
        "button",
        "plain_text",
    )
    assert {"block_id", "action_ts"} <= set(a) and p["response_url"] and p["trigger_id"]


def test_view_submission_shape():
    body, _ = view_submission(
        "request_modal",
        "meta",
        {
            "reason": {"reason_input": "deploy"},
            "ttl": {"ttl_sel": {"type": "static_select", "selected_option": {"value": "30"}}},
        },
        user_id="U0ALICE",
    )
    p = json.loads(parse_qs(body.decode())["payload"][0])
    assert p["type"] == "view_submission" and p["view"]["callback_id"] == "request_modal"
    assert p["view"]["private_metadata"] == "meta"
    assert p["view"]["state"]["values"]["reason"]["reason_input"] == {
        "type": "plain_text_input",
        "value": "deploy",
    }
    assert p["view"]["state"]["values"]["ttl"]["ttl_sel"]["selected_option"]["value"] == "30"


def test_events():
    body, ctype = url_verification("ch4ll")
    assert ctype == "application/json" and json.loads(body) == {
        "token": json.loads(body)["token"],
        "challenge": "ch4ll",
        "type": "url_verification",
    }
    env = json.loads(event_callback({"type": "app_mention", "user": "U0ALICE", "text": "hi"})[0])
    assert env["type"] == "event_callback" and env["event_id"].startswith("Ev") and env["team_id"] == TEAM_ID
    assert env["authorizations"][0]["user_id"] == BOT_USER_ID and isinstance(env["event_time"], int)
    home = json.loads(app_home_opened("U0ALICE")[0])
    assert home["event"]["type"] == "app_home_opened" and home["event"]["tab"] == "home"


def test_bolt_app_accepts_every_payload(fake):
    """End to end: a Bolt app pointed at the fake recognises each signed payload."""
    seen: dict[str, object] = {}
    app = App(
        client=WebClient(token=TOKEN, base_url=fake.api_url),
        signing_secret=SECRET,
        process_before_response=True,
    )

    @app.command("/jit")
    def on_cmd(ack, command, client):
        ack()
        seen["cmd"] = command["text"]
        client.chat_postMessage(channel=command["channel_id"], text=f"got {command['text']}")

    @app.action("approve")
    def on_approve(ack, body, respond):
        ack()
        seen["action"] = (
            body["user"]["id"],
            body["actions"][0]["value"],
            body["container"]["message_ts"],
        )
        respond(text="approved", replace_original=True)

    @app.view("request_modal")
    def on_submit(ack, view):
        ack()
        seen["view"] = view["state"]["values"]["reason"]["reason_input"]["value"]

    @app.event("app_home_opened")
    def on_home(event, client):
        client.views_publish(user_id=event["user"], view={"type": "home", "blocks": []})

    def dispatch(built, timestamp=None):
        body, headers = signed(SECRET, built, timestamp)
        return app.dispatch(BoltRequest(body=body.decode(), headers=headers))

    assert dispatch(slash_command("request db 1h", user_id="U0ALICE", channel_id="C1")).status == 200
    ts = fake.wait_for("chat.postMessage").response["ts"]
    url = fake.response_url("c1", channel="C1", message_ts=ts)
    msg = fake.message(ts)
    payload = json.loads(parse_qs(block_action("approve", "v", "U0BOB", message=msg)[0].decode())["payload"][0])
    assert payload["message"]["text"] == "got request db 1h" and "channel" not in payload["message"]
    assert (
        dispatch(block_action("approve", "req-1", user_id="U0BOB", channel="C1", message=msg, response_url=url)).status
        == 200
    )
    assert fake.message(ts)["text"] == "approved"
    assert (
        dispatch(view_submission("request_modal", "", {"reason": {"reason_input": "why"}}, user_id="U0ALICE")).status
        == 200
    )
    assert dispatch(app_home_opened("U0ALICE")).status == 200
    r = dispatch(url_verification("xyz"))
    assert r.status == 200 and json.loads(r.body)["challenge"] == "xyz"
    assert dispatch(slash_command("x", user_id="U0ALICE"), timestamp=int(time.time()) - 3600).status == 401

    assert seen == {"cmd": "request db 1h", "action": ("U0BOB", "req-1", ts), "view": "why"}
    assert fake.home("U0ALICE") is not None
