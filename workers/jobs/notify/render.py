"""A request's own Slack message as it should read now (the blocks come from the pure views)."""

from __future__ import annotations

import hashlib
import json

from bot.decision.slack.views.blocks import request_blocks, request_summary
from bot.decision.slack.views.gate import gate_context
from bot.decision.slack.views.usage import usage_line
from bot.store.gates import GateStore
from bot.store.usage import parse_headline


def render(rt, req) -> tuple[str, list]:
    """(fallback text, blocks). The request's own fields are taken from the hash `req` was read
    from (one snapshot, no round trips of their own)."""
    own = rt.store.fields_of(req, "usage", "gate")
    usage = usage_line(rt.usage.checks(req.id), parse_headline(own.get("usage")))
    blocks = request_blocks(req, **rt.decisions.message_facts(req), usage=usage)
    gid = own.get("gate")
    gate = GateStore(rt.redis, rt.settings.jit_request_retention).get(gid) if gid else None
    if gate is not None:  # a deployment GitHub/GitLab holds for this decision: above the buttons
        at = len(blocks) - 1 if blocks and blocks[-1].get("type") == "actions" else len(blocks)
        blocks.insert(
            at,
            gate_context(
                gate.platform,
                gate.place,
                gate.environment,
                told=gate.told,
                attempts=gate.attempts,
                last_error=gate.last_error,
                gave_up=gate.gave_up,
            ),
        )
    return request_summary(req), blocks


def message_hash(text: str, blocks: list) -> str:
    """What was last sent, so an update that changes nothing is skipped."""
    raw = json.dumps([text, blocks], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:32]
