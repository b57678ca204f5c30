"""A local test double for Slack's boundary, speaking Slack's real wire formats.

Two directions are covered:

* **Bot -> Slack** (:class:`SlackFake`, ``web_api``): a threaded HTTP server on ``127.0.0.1``
  that answers the Web API the way ``slack_sdk.WebClient(base_url=fake.api_url)``
  calls it (POST form / JSON bodies, GET query strings, ``Authorization: Bearer``),
  records every call, keeps the state of posted messages and views, and can inject
  faults at run time (5xx, 429 + ``Retry-After``, slowness, Slack-level errors,
  a per-channel ``chat.postMessage`` limiter). It also serves ``response_url``\\ s,
  and Socket Mode (:class:`SocketModeServer`, ``socket_mode``).

* **Slack -> bot** (``payloads``): builders for exactly what Slack POSTs to
  the bot's request URL -- slash commands (plain form), interaction payloads
  (form field ``payload=<json>``), Events API callbacks (JSON) -- and
  :func:`sign` for the ``X-Slack-Signature`` / ``X-Slack-Request-Timestamp``
  headers. Each builder returns ``(body_bytes, content_type)``; sign the *same
  bytes* you send.

Typical use::

    with SlackFake(token="xoxb-test", usergroups={"S0APPROVERS": ["U1", "U2"]}) as fake:
        client = WebClient(token="xoxb-test", base_url=fake.api_url)
        ...
        body, ctype = block_action("approve", "req-42", user_id="U1",
                                   response_url=fake.response_url("click1"))
        flask_client.post("/slack/events", data=body, headers=sign(SECRET, body, content_type=ctype))
        fake.wait_for(lambda c: c.method == "chat.update")
        assert "sekrit" not in fake.all_text()

A pytest fixture is a two-liner::

    @pytest.fixture
    def slack():
        with SlackFake() as fake:
            yield fake

Stdlib only.
"""

from .payloads import (
    app_home_opened,
    block_action,
    event_callback,
    sign,
    signed,
    slash_command,
    url_verification,
    view_submission,
)
from .socket_mode import SocketModeServer, envelope_payload
from .web_api import Call, SlackFake, Stats
from .wire import APP_ID, BOT_ID, BOT_USER_ID, TEAM_DOMAIN, TEAM_ID, VERIFICATION_TOKEN

__all__ = [
    "APP_ID",
    "BOT_ID",
    "BOT_USER_ID",
    "TEAM_DOMAIN",
    "TEAM_ID",
    "VERIFICATION_TOKEN",
    "Call",
    "SlackFake",
    "SocketModeServer",
    "Stats",
    "app_home_opened",
    "block_action",
    "envelope_payload",
    "event_callback",
    "sign",
    "signed",
    "slash_command",
    "url_verification",
    "view_submission",
]
