"""The sandbox answers jit as Slack does: the Web API over its real wire formats, and nobody else."""

from __future__ import annotations

import json
import urllib.parse

import pytest
import requests
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError

from bot.sandbox import Sandbox
from bot.sandbox.payloads import Answer
from bot.sandbox.people import Refused

TOKEN = "xoxb-sandbox-test-token"
APPROVE = {"type": "plain_text", "text": "Approve", "emoji": False}


@pytest.fixture
def sandbox():
    sb = Sandbox("http://127.0.0.1:9/slack/events", "signing-secret", TOKEN).start()
    yield sb
    sb.stop()


@pytest.fixture
def slack(sandbox):
    return WebClient(token=TOKEN, base_url=sandbox.api_url, retry_handlers=[])


def refusal(call) -> str:
    with pytest.raises(SlackApiError) as e:
        call()
    assert e.value.response.status_code == 200  # Slack refuses in the body, not with the status
    assert e.value.response["ok"] is False
    return e.value.response["error"]


def test_jit_is_answered_as_by_slack_json_form_and_query_bodies(sandbox, slack):
    assert slack.auth_test()["team_id"] == "T0SANDBOX"
    # JSON body (slack_sdk's chat_postMessage), blocks and metadata kept as sent
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": "*hi*"}}]
    posted = slack.chat_postMessage(channel="C0APPROVALS", text="hi", blocks=blocks, metadata={"event_type": "x"})
    assert posted["channel"] == "C0APPROVALS" and posted["message"]["blocks"] == blocks
    # form body with blocks as JSON text, the token in the form: what api_call(data=...) sends
    form = requests.post(
        sandbox.api_url + "chat.update",
        data={"token": TOKEN, "channel": "C0APPROVALS", "ts": posted["ts"], "text": "edited", "blocks": "[]"},
        timeout=10,
    ).json()
    assert form["ok"] and form["message"]["text"] == "edited" and form["message"]["edited"]["ts"]
    # GET with a query string (conversations.history), metadata only when asked for
    history = slack.conversations_history(channel="C0APPROVALS", include_all_metadata=True)
    assert history["messages"][0]["metadata"] == {"event_type": "x"}
    assert "metadata" not in slack.conversations_history(channel="C0APPROVALS")["messages"][0]
    assert slack.usergroups_users_list(usergroup="S0LEADS")["users"] == ["U0BOB", "U0CAROL"]
    assert slack.users_info(user="U0BOB")["user"]["name"] == "bob"
    dm = slack.conversations_open(users="U0CAROL")["channel"]["id"]
    assert slack.chat_postMessage(channel=dm, text="your request was approved")["channel"] == dm
    link = slack.chat_getPermalink(channel="C0APPROVALS", message_ts=posted["ts"])
    assert link["permalink"].endswith(posted["ts"].replace(".", ""))


def test_refusals_are_slacks_own(sandbox, slack):
    assert refusal(lambda: WebClient(base_url=sandbox.api_url).auth_test()) == "not_authed"
    assert refusal(lambda: WebClient(token="xoxb-guess", base_url=sandbox.api_url).auth_test()) == "invalid_auth"
    # a token in a JSON body does not count: Slack wants it in the Authorization header then
    sent = requests.post(sandbox.api_url + "auth.test", json={"token": TOKEN}, timeout=10).json()
    assert sent == {"ok": False, "error": "not_authed"}
    assert refusal(lambda: slack.api_call("chat.unfurl2")) == "unknown_method"
    assert refusal(lambda: slack.chat_postMessage(channel="C0APPROVALS")) == "no_text"
    assert refusal(lambda: slack.chat_postMessage(channel="not a channel", text="x")) == "channel_not_found"
    assert refusal(lambda: slack.chat_update(channel="C0APPROVALS", ts="1.2", text="x")) == "message_not_found"
    assert refusal(lambda: slack.usergroups_users_list(usergroup="S0NOPE")) == "no_such_subteam"
    assert refusal(lambda: slack.users_info(user="U0NOBODY")) == "user_not_found"
    assert refusal(lambda: slack.chat_postEphemeral(channel="C0APPROVALS", user="U0NOBODY", text="x")) == (
        "user_not_in_channel"
    )
    bad_json = requests.post(
        sandbox.api_url + "chat.postMessage",
        data=b"{not json",
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        timeout=10,
    ).json()
    assert bad_json == {"ok": False, "error": "invalid_json"}


def test_a_modal_opens_only_with_a_trigger_from_a_click_and_only_once(sandbox, slack):
    view = {"type": "modal", "title": {"type": "plain_text", "text": "Deny"}, "blocks": []}
    assert refusal(lambda: slack.views_open(trigger_id="12345.67890.made-up", view=view)) == "invalid_trigger_id"
    trigger = sandbox.state.issue_trigger("U0ALICE")  # what a click hands out
    opened = slack.views_open(trigger_id=trigger, view=view)["view"]
    assert sandbox.state.snapshot("U0ALICE")["modal"]["id"] == opened["id"]
    assert sandbox.state.snapshot("U0BOB")["modal"] is None  # only the one who clicked sees it
    assert refusal(lambda: slack.views_open(trigger_id=trigger, view=view)) == "invalid_trigger_id"  # exchanged


def test_each_person_sees_the_channels_their_direct_messages_and_their_ephemerals_only(sandbox, slack):
    dm = slack.conversations_open(users="U0CAROL")["channel"]["id"]
    slack.chat_postMessage(channel=dm, text="for carol")
    slack.chat_postEphemeral(channel="C0APPROVALS", user="U0DAVE", text="only dave")
    slack.chat_postMessage(channel="C0APPROVALS", text="for everyone")
    carol, dave = sandbox.state.snapshot("U0CAROL"), sandbox.state.snapshot("U0DAVE")
    assert [m["text"] for m in carol["messages"]] == ["for carol", "for everyone"]
    assert [m["text"] for m in dave["messages"]] == ["for everyone"]
    assert [e["text"] for e in dave["ephemerals"]] == ["only dave"] and carol["ephemerals"] == []


def page_token(sandbox) -> str:
    html = requests.get(sandbox.url + "/", timeout=10).text
    return html.split('name="jit-sandbox-token" content="', 1)[1].split('"', 1)[0]


def test_only_the_sandbox_page_may_act_and_only_on_the_names_it_is_reached_by(sandbox):
    token = page_token(sandbox)
    click = {"user": "U0ALICE", "where": {"kind": "message", "ts": "1.000001"}, "block": 0, "element": 0}
    # another web page can POST to localhost, but not with this header (that needs a CORS preflight
    # nobody answers), and a plain form post is not JSON
    assert requests.post(sandbox.url + "/ui/click", json=click, timeout=10).status_code == 403
    form = requests.post(
        sandbox.url + "/ui/click",
        data={"payload": json.dumps(click)},
        headers={"X-Sandbox-Token": token},
        timeout=10,
    )
    assert form.status_code == 415
    assert requests.get(sandbox.url + "/ui/state", timeout=10).status_code == 403
    # DNS rebinding: a hostile name resolving to 127.0.0.1 gets nothing, not even the page or the API
    for path in ("/", "/ui/state", "/api/auth.test"):
        r = requests.get(sandbox.url + path, headers={"Host": "evil.example", "X-Sandbox-Token": token}, timeout=10)
        assert r.status_code == 421
    page = requests.get(sandbox.url + "/", timeout=10)
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"
    assert requests.get(f"http://localhost:{sandbox.port}/", timeout=10).status_code == 200


def test_a_click_sends_the_buttons_own_value_not_what_the_page_claims(sandbox, slack, monkeypatch):
    sent = []

    def send(body: bytes, ctype: str) -> Answer:
        sent.append((body, ctype))
        return Answer(200, b"", "text/plain", 0.01)

    monkeypatch.setattr(sandbox.people.jit, "send", send)
    blocks = [
        {"type": "section", "text": {"type": "mrkdwn", "text": "request"}},
        {
            "type": "actions",
            "block_id": "decide:r1",
            "elements": [
                {"type": "button", "action_id": "jit_approve", "value": "r1", "style": "primary", "text": APPROVE}
            ],
        },
    ]
    ts = slack.chat_postMessage(channel="C0APPROVALS", text="request", blocks=blocks)["ts"]
    sandbox.people.click("U0BOB", {"kind": "message", "ts": ts, "value": "r2"}, 1, 0)
    ((body, ctype),) = sent
    assert ctype == "application/x-www-form-urlencoded"
    payload = json.loads(urllib.parse.parse_qs(body.decode())["payload"][0])
    assert payload["type"] == "block_actions" and payload["user"]["id"] == "U0BOB"
    assert payload["actions"][0] | {"action_ts": None} == {
        "action_id": "jit_approve",
        "block_id": "decide:r1",
        "text": APPROVE,
        "value": "r1",
        "type": "button",
        "style": "primary",
        "action_ts": None,
    }
    assert payload["container"] == {
        "type": "message",
        "message_ts": ts,
        "channel_id": "C0APPROVALS",
        "is_ephemeral": False,
    }
    assert payload["message"]["blocks"] == blocks and payload["trigger_id"] in sandbox.state.triggers
    with pytest.raises(Refused):
        sandbox.people.click("U0BOB", {"kind": "message", "ts": ts}, 0, 0)  # a section, not a button
    with pytest.raises(Refused):
        sandbox.people.click("U0NOBODY", {"kind": "message", "ts": ts}, 1, 0)
