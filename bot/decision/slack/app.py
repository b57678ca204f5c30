"""The Bolt App: signature verification on, jit's guards as middleware, listeners by kind."""

from __future__ import annotations

import logging

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from slack_bolt import App, BoltResponse
from slack_bolt.authorization import AuthorizeResult
from slack_sdk import WebClient

from bot.decision.slack import listeners
from bot.decision.slack.middleware import Guard, Provide
from bot.runtime import Runtime


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
    app.use(Provide(rt))
    app.use(Guard())
    listeners.register(app)
    app.error(on_error)
    return app


def on_error(error: Exception, logger: logging.Logger) -> BoltResponse | None:
    """Redis away (a restart, a failover): 503, so Slack retries the click rather than dropping it.
    Anything else is Bolt's 500, logged with its traceback."""
    if isinstance(error, RedisConnectionError | RedisTimeoutError):
        logger.warning("Redis unavailable (%s): Slack request refused with 503", type(error).__name__)
        return BoltResponse(
            status=503,
            body="jit is briefly unavailable; Slack will retry",
            headers={"content-type": "text/plain; charset=utf-8"},
        )
    logger.exception("Slack request failed: %s", type(error).__name__)
    return None
