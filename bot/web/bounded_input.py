"""Reading untrusted HTTP input within bounds: body bytes, and how deep its JSON may nest."""

from __future__ import annotations

import json
import re
from contextlib import AbstractContextManager, nullcontext
from typing import IO, Any

import gevent
from flask import current_app, request
from gevent import monkey

#: Read the body in pieces of this size: a cap is never overshot by more than one piece's worth.
_PIECE = 64 * 1024


class TooLarge(ValueError):
    """The body is larger than the cap (declared or actually sent)."""


class TooSlow(Exception):  # noqa: N818 - named for what the sender did, like TooLarge
    """The body did not arrive within its deadline. A sender that trickles it would hold a
    connection (and, on the hook, a place in the server's in-flight bound) for as long as it likes."""


class TooDeep(ValueError):
    """The JSON nests deeper than allowed; refused before the parser recurses into it."""

    def __init__(self, max_depth: int) -> None:
        super().__init__(f"the JSON is nested more than {max_depth} levels deep")
        self.max_depth = max_depth


def read_body(stream: IO[bytes], content_length: int | None, cap: int, deadline_s: float | None = None) -> bytes:
    """The body, at most `cap` bytes of it, within `deadline_s` seconds; else TooLarge or TooSlow.

    A declared Content-Length over the cap is refused before a byte is read; a body without one
    (chunked) is read until it ends or passes the cap, never further: at most cap + 1 bytes are
    ever held. (Flask's `get_data()` would read everything the client sends.) The deadline holds
    where sockets are gevent's (`jit serve`); the connection is not to be reused after TooSlow."""
    if content_length is not None and content_length > cap:
        raise TooLarge()
    chunks: list[bytes] = []
    held = 0
    with _deadline(deadline_s):
        while held <= cap:
            piece = stream.read(min(_PIECE, cap + 1 - held))
            if not piece:
                break
            chunks.append(piece)
            held += len(piece)
    if held > cap:
        raise TooLarge()
    return b"".join(chunks)


#: Where the app keeps JIT_HTTP_BODY_TIMEOUT_S (bot/web/app.py).
DEADLINE_CONFIG = "JIT_BODY_DEADLINE_S"


def request_body(cap: int) -> bytes:
    """`read_body` of the Flask request being served, within the app's body deadline."""
    return read_body(request.stream, request.content_length, cap, current_app.config.get(DEADLINE_CONFIG))


def _deadline(seconds: float | None) -> AbstractContextManager[object]:
    """TooSlow raised in the reading greenlet once `seconds` pass (a blocking read without gevent
    cannot be interrupted: there the front proxy's timeout has to do)."""
    if not seconds or not monkey.is_module_patched("socket"):
        return nullcontext()
    return gevent.Timeout(seconds, TooSlow())


# What matters for nesting: quotes, backslashes (escapes inside strings) and brackets.
_STRUCTURE = re.compile(r'["\\\[\]{}]')


def nests_deeper_than(text: str, max_depth: int) -> bool:
    """Whether `text`'s arrays and objects nest more than `max_depth` levels (brackets inside
    strings are text). One linear pass over the structural characters only; exact for valid
    JSON, and for invalid JSON never lower than what a parser would recurse into."""
    depth = 0
    in_string = False
    escaped_at = -1  # index of the character a backslash escapes
    for m in _STRUCTURE.finditer(text):
        i, c = m.start(), m.group()
        if i == escaped_at:
            continue
        if in_string:
            if c == "\\":
                escaped_at = i + 1
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            if depth > max_depth:
                return True
        elif c in "]}":
            depth -= 1
    return False


def loads(text: str | bytes, max_depth: int) -> Any:
    """`json.loads`, refusing (TooDeep) anything nested deeper than `max_depth` before parsing:
    the parser recurses once per level and would otherwise end in a RecursionError."""
    if isinstance(text, bytes | bytearray):
        text = text.decode("utf-8")
    if nests_deeper_than(text, max_depth):
        raise TooDeep(max_depth)
    return json.loads(text)
