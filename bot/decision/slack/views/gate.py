"""The line a gated request's message carries about its deployment: what waits, and what the platform heard."""

from __future__ import annotations

from typing import Any

from bot.core.gates import TITLE
from bot.decision.slack.views.text import code, context, literal


def gate_context(
    platform: str,
    place: str,
    environment: str,
    *,
    told: str | None = None,
    attempts: int = 0,
    last_error: str | None = None,
    gave_up: str | None = None,
) -> dict[str, Any]:
    """`attempts`: failed tries to tell the platform so far; `last_error`: the latest failure;
    `gave_up`: the platform refused the answer for good; `told`: approved / rejected / cancelled."""
    name = TITLE.get(platform, platform)
    what = f"the deployment of {code(place, 200)} to {code(environment, 100)}"
    failed = f"{attempts} failed: {literal(last_error, 200) or 'no detail'}" if attempts else ""
    if told == "cancelled":
        line = f":leftwards_arrow_with_hook: {name} cancelled {what}; nothing to tell it"
    elif told:
        line = f":white_check_mark: {name} was told: *{told}* ({what})"
        if attempts:
            line += f", after {attempts + 1} attempts ({failed})"
    elif gave_up:
        line = f":x: {name} refused jit's answer on {what}: {literal(gave_up, 300)}"
    elif attempts:
        line = f":warning: {name} has not heard the decision on {what} yet: {failed}. jit keeps retrying"
    else:
        line = f":hourglass_flowing_sand: {name} holds {what} until this is decided"
    return context(line)
