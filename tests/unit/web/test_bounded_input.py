"""Untrusted bodies are read within a cap and JSON is refused before it nests too deep."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.web import bounded_input
from bot.web.bounded_input import TooDeep, TooLarge, nests_deeper_than, read_body


class EndlessStream:
    """A client that never stops sending (a chunked body without end); counts what was taken."""

    def __init__(self) -> None:
        self.taken = 0

    def read(self, n: int = -1) -> bytes:
        assert n > 0, "an unbounded read of an endless body"
        self.taken += n
        return b"x" * n


def test_declared_length_over_the_cap_is_refused_before_reading():
    stream = EndlessStream()
    with pytest.raises(TooLarge):
        read_body(stream, 1_500_000_000, 1024)
    assert stream.taken == 0


def test_undeclared_body_is_read_to_at_most_cap_plus_one_byte():
    stream = EndlessStream()
    with pytest.raises(TooLarge):
        read_body(stream, None, 100_000)
    assert stream.taken == 100_001


def test_body_within_the_cap_is_returned_whole():
    import io

    assert read_body(io.BytesIO(b"a" * 1024), None, 1024) == b"a" * 1024
    assert read_body(io.BytesIO(b"abc"), 3, 1024) == b"abc"


@pytest.mark.parametrize(
    "text,deeper_than_3",
    [
        ("[[[]]]", False),
        ("[[[[]]]]", True),
        ('{"a": {"b": {"c": 1}}}', False),
        ('{"a": {"b": {"c": {}}}}', True),
        ('["[[[[[[", "{{{{{{"]', False),  # brackets in strings are text
        ('["\\"[[[[[["]', False),  # an escaped quote does not end the string
        ('["\\\\", [[[]]]]', True),  # an escaped backslash does: the brackets after it count
        ("[" * 8000, True),
    ],
)
def test_nesting_depth(text, deeper_than_3):
    assert nests_deeper_than(text, 3) is deeper_than_3


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet='[]{}"\\ab', max_size=6),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(alphabet='[]{}"\\ab', max_size=4), c, max_size=3),
    max_leaves=20,
)


def _depth(value) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None, database=None)
@given(value=_json, limit=st.integers(0, 6))
def test_nesting_depth_matches_the_parsed_value(value, limit):
    text = json.dumps(value)
    assert nests_deeper_than(text, limit) is (_depth(value) > limit)
    if _depth(value) > limit:
        with pytest.raises(TooDeep):
            bounded_input.loads(text, limit)
    else:
        assert bounded_input.loads(text, limit) == value
