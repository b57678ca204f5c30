"""The first hour, in a browser: `jit dev`, a curl, and people clicking in the Slack sandbox's page.

Real processes (`jit dev --example-policy`: its own Redis, server, worker and sandbox) and headless
Chromium from Debian, driven by Selenium. Every wait is for something on the page or in jit.
"""

from __future__ import annotations

import pytest
import requests
from dev_support import Dev
from sandbox_page import SandboxPage, chromium, have_chromium
from selenium.webdriver.common.by import By
from slack_sdk import WebClient

from bot.sandbox import Sandbox

#: Slack's escaping, as jit sends a reason with `<b>` in it; and formatting that is meant.
ESCAPED = "&lt;b&gt;escaped&lt;/b&gt; *bold* `co&lt;de&gt;`"

pytestmark = pytest.mark.skipif(not have_chromium(), reason="chromium + chromium-driver not installed (.ci/run does)")


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    dev = Dev(tmp_path_factory.mktemp("jit-dev"), "--example-policy")
    try:
        dev.wait_ready()
        yield dev
        assert dev.stop() == 0, dev.output()
        assert "Traceback" not in dev.output()
    finally:
        dev.kill()


@pytest.fixture(scope="module")
def browser():
    driver = chromium()
    yield driver
    driver.quit()


@pytest.fixture
def page(dev, browser):
    return SandboxPage(browser, dev.sandbox_url()).open()


class Pipeline:
    """The pipeline's side, over HTTP as the README shows it."""

    def __init__(self, dev: Dev) -> None:
        self.url, self.token = dev.url, dev.pipeline_token()

    def ask(self, reason: str) -> tuple[str, str]:
        r = requests.post(
            self.url + "/v1/requests",
            json={"action": "read-secret", "reason": reason, "requested_by": "carol@example.com"},
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10,
        )
        assert r.status_code == 201, r.text
        return r.json()["id"], r.json()["request_token"]

    def get(self, rid: str, rtok: str, path: str = "") -> requests.Response:
        return requests.get(
            f"{self.url}/v1/requests/{rid}{path}", headers={"Authorization": f"Bearer {rtok}"}, timeout=10
        )


def test_two_approvers_clicking_in_the_page_make_it_active_and_refusals_are_told(dev, page):
    pipeline = Pipeline(dev)
    rid, rtok = pipeline.ask("release 4.2")
    page.be("U0ALICE")
    page.wait_message(rid, "Waiting for approval")

    page.be("U0DAVE")  # in the workspace, not in the policy
    assert "not an approver" in page.click_and_hear(rid, "Approve", "approver")
    page.be("U0CAROL")  # asked for it (requested_by carol@example.com), and is in @leads
    assert "yourself" in page.click_and_hear(rid, "Approve", "yourself")
    assert pipeline.get(rid, rtok).json()["approvals"]["count"] == 0

    page.be("U0ALICE")
    assert "1 more needed" in page.click_and_hear(rid, "Approve", "recorded")
    page.be("U0BOB")  # an approver through the user group @leads
    page.click(rid, "Approve")
    page.wait_message(rid, "Active")

    body = pipeline.get(rid, rtok).json()
    assert body["status"] == "active" and set(body["approvals"]["by"]) == {"U0ALICE", "U0BOB"}
    credential = pipeline.get(rid, rtok, "/credential")
    assert credential.status_code == 200 and credential.json()["credential"]["token"]

    # Revoke now asks first (the button's confirm), then ends the grant for the pipeline too
    page.click(rid, "Revoke now", confirm=True)
    page.wait_message(rid, "Revoked early")
    assert pipeline.get(rid, rtok).json()["status"] == "revoked"
    assert pipeline.get(rid, rtok, "/credential").status_code == 410


def test_a_deny_with_a_reason_typed_in_the_modal_reaches_the_pipeline(dev, page):
    pipeline = Pipeline(dev)
    rid, rtok = pipeline.ask("migrate orders")
    page.be("U0ALICE")
    page.click(rid, "Deny")
    page.modal()
    page.submit_modal()  # no reason: refused before anything is sent, as Slack does
    page.until(lambda: "Please fill out this field." in page.modal().text, "the required-field error")
    page.type_in_modal("not during the freeze <b>really</b>")
    page.submit_modal()
    page.wait_modal_closed()
    page.wait_message(rid, "Denied")
    # shown as typed (read again if the message re-renders meanwhile: an element read once goes stale)
    page.wait_message(rid, "not during the freeze <b>really</b>")

    body = pipeline.get(rid, rtok).json()
    assert body["status"] == "denied"
    assert body["deny_reason"] == "not during the freeze <b>really</b>" and body["decided_by"] == "U0ALICE"
    # the requester hears it in a direct message
    page.be("U0CAROL")
    page.go("D0CAROL")
    page.until(lambda: "was denied by @alice" in page.message(rid).text, "carol's DM")


def test_a_slash_command_is_answered_to_the_one_who_typed_it(dev, page):
    rid, _ = Pipeline(dev).ask("status please")
    page.be("U0BOB")
    page.go("C0APPROVALS")
    page.command("/jit status")
    answer = page.wait_ephemeral(rid)
    assert "/jit status" in answer and "Pending" in answer
    page.be("U0DAVE")
    page.until(lambda: not any(rid in t for t in page.ephemerals()), "dave's view without bob's answer")


def test_whatever_a_message_holds_the_page_shows_it_as_text(browser):
    """Hostile text straight into the sandbox (jit itself escapes, but the page must not rely on it)."""
    sandbox = Sandbox("http://127.0.0.1:9/slack/events", "secret", "xoxb-t").start()
    try:
        slack = WebClient(token="xoxb-t", base_url=sandbox.api_url)
        hostile = '<img src=x onerror="document.title=\'pwned\'"><script>document.title="pwned"</script>'
        slack.chat_postMessage(
            channel="C0APPROVALS",
            text=hostile,
            blocks=[
                {"type": "header", "text": {"type": "plain_text", "text": hostile}},
                {"type": "section", "text": {"type": "mrkdwn", "text": ESCAPED}},
                {"type": "section", "text": {"type": "mrkdwn", "text": "<javascript:document.title='pwned'|run me>"}},
                {"type": "section", "text": {"type": "mrkdwn", "text": "<https://example.com/run/1|the run>"}},
                {
                    "type": "actions",
                    "elements": [
                        {
                            "type": "button",
                            "action_id": "x",
                            "value": "v",
                            "text": {"type": "plain_text", "text": hostile},
                        }
                    ],
                },
            ],
        )
        page = SandboxPage(browser, sandbox.url).open()
        message = page.wait_message("run me")
        assert browser.title != "pwned"
        assert browser.find_elements(By.CSS_SELECTOR, "#feed img, #feed script") == []
        assert message.find_element(By.CSS_SELECTOR, ".bk-header").text == hostile
        assert message.find_element(By.CSS_SELECTOR, "button.bk-button").text == hostile
        assert "<b>escaped</b>" in message.text
        assert message.find_element(By.CSS_SELECTOR, ".blocks strong").text == "bold"
        assert message.find_element(By.CSS_SELECTOR, "code").text == "co<de>"
        links = message.find_elements(By.CSS_SELECTOR, ".blocks a")
        assert [(a.text, a.get_attribute("href")) for a in links] == [("the run", "https://example.com/run/1")]
        assert "run me" in message.text  # a javascript: link is shown as its label, never as a link
        assert browser.title != "pwned"
    finally:
        sandbox.stop()
