"""The Bolt App: signature verification stays on; listeners are wired in by `register(app)`."""

from __future__ import annotations

from slack_bolt import App
from slack_bolt.authorization import AuthorizeResult
from slack_sdk import WebClient

from bot.wiring import Runtime


def build_app(rt: Runtime) -> App:
    token = rt.settings.slack_bot_token.get_secret_value()

    def authorize(enterprise_id, team_id, logger):  # no auth.test per request: Slack may be down
        return AuthorizeResult(enterprise_id=enterprise_id, team_id=team_id, bot_token=token)

    app = App(
        client=WebClient(base_url=rt.settings.slack_api_url, timeout=10),
        signing_secret=rt.settings.slack_signing_secret.get_secret_value(),
        authorize=authorize,
        # Listeners do their Redis work and ack within milliseconds; anything slow (Slack posts,
        # grants) is handed to RQ. Answering after the listener returns avoids Bolt's 10 ms
        # polling for the ack, and the state has changed by the time Slack hears back.
        process_before_response=True,
        request_verification_enabled=True,
        ssl_check_enabled=True,
        url_verification_enabled=True,
    )
    from bot.decision.slack.listeners import register

    register(app, rt)
    return app
