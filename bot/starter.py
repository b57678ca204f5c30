"""The starter policy `jit dev` and `jit init` write: bot/example-policy.yaml with a fresh pipeline token.

Standard library only: `jit init` imports it before `jit serve` would let gevent patch anything.
"""

from __future__ import annotations

import hashlib
import secrets
from pathlib import Path

EXAMPLE_POLICY = Path(__file__).with_name("example-policy.yaml")
TOKEN_PLACEHOLDER = "__PIPELINE_TOKEN_SHA256__"


def new_pipeline_token() -> str:
    """A pipeline's bearer token: 192 random bits (the policy keeps only its SHA-256)."""
    return "jit_" + secrets.token_urlsafe(24)


def starter_policy(token: str) -> str:
    """The commented starter policy, its one pipeline authenticated by `token`."""
    text = EXAMPLE_POLICY.read_text(encoding="utf-8")
    return text.replace(TOKEN_PLACEHOLDER, hashlib.sha256(token.encode()).hexdigest())
