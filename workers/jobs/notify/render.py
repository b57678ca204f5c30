"""A request's own Slack message as it should read now (the blocks come from the pure views)."""

from __future__ import annotations

import hashlib
import json

from bot.decision.slack.views.blocks import request_blocks, request_summary


def render(rt, req) -> tuple[str, list]:
    """(fallback text, blocks)."""
    blocks = request_blocks(req, **rt.decisions.message_facts(req))
    return request_summary(req), blocks


def message_hash(text: str, blocks: list) -> str:
    """What was last sent, so an update that changes nothing is skipped."""
    raw = json.dumps([text, blocks], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:32]
