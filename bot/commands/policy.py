"""`jit policy check FILE`: every error with its line (exit 1), warnings about risky grants (exit 0)."""

from __future__ import annotations

import os
import sys

from bot.core.errors import PolicyError
from bot.request.gates.gitlab import policy_warnings as gitlab_warnings
from bot.wiring import load_policy


def check(path: str) -> int:
    try:
        policy = load_policy(path)
    except PolicyError as e:
        for line in e.errors:
            print(line)
        print(f"{len(e.errors)} error(s) in {path}", file=sys.stderr)
        return 1
    print(f"{path}: ok — {len(policy.actions)} action(s), {len(policy.pipelines)} pipeline(s), sha256 {policy.sha256}")
    for name, (_gtype, config) in policy.grants.items():
        for warning in config.warnings(os.environ):
            print(f"{path}: actions.{name}.grant: warning: {warning}")
    for warning in gitlab_warnings(policy, os.environ):
        print(f"{path}: {warning}")
    return 0
