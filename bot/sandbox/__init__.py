"""A local stand-in for Slack that `jit dev` starts when no Slack app is configured: the Web API jit
calls (at SLACK_API_URL) and a page where people click, sent back to jit signed as Slack sends it.

Only bot/dev.py starts it; `jit serve` never does, and nothing else in jit knows it exists.
"""

from bot.sandbox.server import Sandbox
from bot.sandbox.workspace import starter_workspace

__all__ = ["Sandbox", "starter_workspace"]
