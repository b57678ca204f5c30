"""Who a piece of text names, and how much of it a person can see.

People are named by pipelines (`requested_by`), by OIDC claims (a GitHub `actor`, a GitLab
`user_login`) and in the policy (`people:`). Text that looks the same to a person must match the
same way here, so ` alice@example.com`, `ALICE@example.com` and `alice\u200b@example.com` are one
identity: `normalize` trims, applies Unicode NFKC, case-folds and drops invisible characters
(format characters such as zero-width spaces and bidi controls, control characters) and folds runs of
whitespace to one space.
"""

from __future__ import annotations

import unicodedata

#: Unicode categories a person cannot see: format (zero-width, bidi controls), control,
#: surrogates, private use, unassigned.
_INVISIBLE = frozenset({"Cf", "Cc", "Cs", "Co", "Cn"})


def visible(text: str) -> str:
    """`text` after NFKC with every invisible character removed and whitespace runs folded."""
    text = unicodedata.normalize("NFKC", text)
    kept = "".join(ch for ch in text if unicodedata.category(ch) not in _INVISIBLE or ch in "\t\n\r")
    return " ".join(kept.split())


def normalize(identity: str) -> str:
    """The form identities are compared in (policy `people` keys and requesters alike)."""
    return visible(identity).casefold()


def visible_length(text: str) -> int:
    """Characters a person actually sees (whitespace and invisible characters not counted)."""
    return sum(1 for ch in visible(text) if not ch.isspace())


def encodable(text: str) -> bool:
    """False for strings that cannot be stored as UTF-8 (lone surrogates from JSON escapes)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
