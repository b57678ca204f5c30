"""Sample values in the docs are not ones a reader might copy into production: no token hash in a
snippet is the SHA-256 of a guessable word."""

from __future__ import annotations

import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
GUESSABLE = ("password", "secret", "token", "test", "changeme", "123456", "letmein", "admin", "jit")


def test_no_token_hash_in_the_docs_is_of_a_guessable_word():
    weak = {hashlib.sha256(word.encode()).hexdigest(): word for word in GUESSABLE}
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")), ROOT / "bot" / "example-policy.yaml"]
    found = [
        f"{page.relative_to(ROOT)}: the SHA-256 of {word!r}"
        for page in pages
        for h, word in weak.items()
        if h in page.read_text()
    ]
    assert found == []
