"""What the sandbox sends jit is what Slack sends: signed raw bytes, Slack's payload shapes."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

import pytest
from slack_sdk import WebClient
from slack_sdk.signature import SignatureVerifier

from bot.decision.slack.http import slack_body
from bot.sandbox import Sandbox

SECRET = "sandbox-signing-secret-0123456789"
TOKEN = "xoxb-sandbox-test"


class Recorder:
    """A request URL that keeps the raw bytes and headers of what it is sent, and answers `reply`."""

    def __init__(self) -> None:
        self.received: list[tuple[bytes, dict[str, str]]] = []
        self.reply = b""
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                recorder.received.append((raw, dict(self.headers.items())))
                self.send_response(200)
                self.send_header("Content-Type", "application/json" if recorder.reply else "text/plain")
                self.send_header("Content-Length", str(len(recorder.reply)))
                self.end_headers()
                self.wfile.write(recorder.reply)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/slack/events"


@pytest.fixture
def app():
    recorder = Recorder()
    sandbox = Sandbox(recorder.url, SECRET, TOKEN).start()
    yield recorder, sandbox, WebClient(token=TOKEN, base_url=sandbox.api_url)
    sandbox.stop()
    recorder.server.shutdown()


def test_every_request_is_signed_over_its_raw_bytes_as_slack_signs(app):
    recorder, sandbox, slack = app
    sandbox.people.command("U0ALICE", "C0APPROVALS", "/jit status")
    ((raw, headers),) = recorder.received
    verifier = SignatureVerifier(SECRET)  # what Bolt checks with
    assert verifier.is_valid_request(raw, headers)
    assert abs(int(headers["X-Slack-Request-Timestamp"]) - time.time()) < 60
    assert headers["X-Slack-Signature"].startswith("v0=")
    assert not verifier.is_valid_request(raw.replace(b"status", b"revoke"), headers)
    assert not SignatureVerifier("another-secret").is_valid_request(raw, headers)


def test_a_slash_command_is_a_plain_form_with_slacks_fields(app):
    recorder, sandbox, slack = app
    recorder.reply = json.dumps({"response_type": "ephemeral", "text": "*jit* — usage"}).encode()
    sandbox.people.command("U0DAVE", "C0APPROVALS", "/jit audit 5 since:2h")
    ((raw, headers),) = recorder.received
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    form = {k: v[0] for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()}
    assert "payload" not in form
    assert set(form) == {
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
    }
    assert (form["command"], form["text"], form["user_id"], form["team_id"], form["channel_id"]) == (
        "/jit",
        "audit 5 since:2h",
        "U0DAVE",
        "T0SANDBOX",
        "C0APPROVALS",
    )
    # the ack body is shown to the one who typed it, and only to them
    (answer,) = sandbox.state.snapshot("U0DAVE")["ephemerals"]
    assert answer["text"] == "*jit* — usage" and answer["command"] == "/jit audit 5 since:2h"
    assert sandbox.state.snapshot("U0ALICE")["ephemerals"] == []


def test_a_modal_submission_carries_the_views_metadata_and_slacks_state_values(app):
    recorder, sandbox, slack = app
    view = {
        "type": "modal",
        "callback_id": "jit_deny_modal",
        "private_metadata": json.dumps({"id": "r1", "channel": "C0APPROVALS", "ts": "1.2"}),
        "title": {"type": "plain_text", "text": "Deny access"},
        "submit": {"type": "plain_text", "text": "Deny"},
        "blocks": [
            {
                "type": "input",
                "block_id": "reason",
                "label": {"type": "plain_text", "text": "Reason"},
                "element": {"type": "plain_text_input", "action_id": "reason_input", "multiline": True},
            }
        ],
    }
    opened = slack.views_open(trigger_id=sandbox.state.issue_trigger("U0ALICE"), view=view)["view"]
    typed = {"reason": {"reason_input": "not during the freeze"}, "forged": {"x": "y"}}
    recorder.reply = json.dumps({"response_action": "errors", "errors": {"reason": "Too late"}}).encode()
    sandbox.people.submit("U0ALICE", opened["id"], typed)
    ((raw, _),) = recorder.received
    payload = slack_body(raw.decode(), "application/x-www-form-urlencoded")  # as jit reads it
    assert payload["type"] == "view_submission" and payload["user"]["id"] == "U0ALICE"
    assert payload["view"]["callback_id"] == "jit_deny_modal"
    assert payload["view"]["private_metadata"] == view["private_metadata"]
    assert payload["view"]["state"] == {
        "values": {"reason": {"reason_input": {"type": "plain_text_input", "value": "not during the freeze"}}}
    }
    # jit's errors stay on the open modal, next to their input
    assert sandbox.state.snapshot("U0ALICE")["modal"]["errors"] == {"reason": "Too late"}
    recorder.reply = b""  # an empty ack closes it
    sandbox.people.submit("U0ALICE", opened["id"], typed)
    assert sandbox.state.snapshot("U0ALICE")["modal"] is None


def test_opening_home_is_an_events_api_callback(app):
    recorder, sandbox, slack = app
    sandbox.people.open_home("U0BOB")
    ((raw, headers),) = recorder.received
    assert headers["Content-Type"] == "application/json"
    body = json.loads(raw)
    assert body["type"] == "event_callback" and body["team_id"] == "T0SANDBOX"
    assert body["event"]["type"] == "app_home_opened" and body["event"]["user"] == "U0BOB"
    assert body["event"]["tab"] == "home"
