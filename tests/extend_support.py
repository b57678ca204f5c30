"""What the extension tests share: the common test policy with `extend:` blocks added."""

from __future__ import annotations


def with_extend(text: str, action: str, block: str) -> str:
    """`text` (a policy) with `extend: {block}` added to `action`."""
    marker = f"  {action}:\n"
    assert marker in text, f"no action {action} in the policy"
    return text.replace(marker, f"{marker}    extend: {block}\n", 1)
