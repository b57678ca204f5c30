"""bot/decision/slack/views/policy_notices.py: the audit channel's line about a reloaded policy
says plainly when nothing that matters changed (test_slack_rendering.py covers hostile text)."""

from __future__ import annotations

from support import policy_text

from bot.core.policy.diff import policy_diff
from bot.decision.slack.views.policy_notices import describe_changes
from bot.wiring import parse_policy


def test_a_reload_that_changed_only_comments_says_so():
    old = parse_policy(policy_text("/tmp/x"), "jit-policy.yaml")
    new = parse_policy(policy_text("/tmp/x") + "# a comment\n", "jit-policy.yaml")
    line = describe_changes(new, old.sha256, policy_diff(old, new), "reload")
    assert line.endswith("• no change to actions, approvers or pipelines (formatting or comments only)")
    assert f"(was `{old.sha256[:16]}`)" in line
