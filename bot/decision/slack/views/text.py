"""The one place where text jit did not write becomes Slack text (and the objects it goes in).

Everything that did not come from jit's own templates — a request's reason, `requested_by` and
context, deny reasons and break-glass justifications, backend error output, audit details,
slash-command arguments, policy-file errors, and policy names too — reaches Slack only through
`literal` and `code` (mrkdwn), `plain` (plain_text objects), `mention` and `link` below; the
Block Kit objects that carry them are built here too (`section`, `fields`, `context`, `header`,
`button`). What Slack documents, and what follows from it:

* mrkdwn (section/context text objects, and the top-level `text` of chat.postMessage, which
  Slack parses as mrkdwn): `&`, `<` and `>` are control characters and must be sent as
  `&amp;`, `&lt;`, `&gt;`; that alone stops `<!channel>`, `<!here>`, `<@U…>`, `<#C…>`,
  `<!date…>` and `<url|label>`, and a pre-escaped `&lt;` is escaped again (`&amp;lt;`), so it
  shows as typed. It does NOT stop formatting: Slack has no escape for `*bold*`, `_italic_`,
  `~strike~`, `` `code` `` or a `>` quote at the start of a line, nor for `:emoji:` codes. So
  `literal` (free text: reasons, errors) replaces those markers with look-alike characters
  (∗ ˍ ∼ ˋ ›, ∶ for the colon of an emoji code) — the text reads the same and cannot format.
  Identifiers people compare or copy (ids, action and pipeline names, refs, repositories, file
  names) go in code spans instead (`code`): Slack formats nothing inside code, so they keep
  every character (`deploy_prod` stays `deploy_prod`) except the backtick, which would close
  the span and becomes ˋ. A newline in a value would let it forge a line of its own
  ("*Pre-approved by Security*"), so every newline, control, zero-width and bidi-override
  character becomes one space; lone surrogates become U+FFFD; runs of combining marks are
  capped (no "zalgo" spilling over other lines).
* mrkdwn text objects are sent with `verbatim: true`: Slack then does not turn bare URLs,
  channel names or @-words into links or mentions (it still honours our own `<@U…>`,
  `<!date…>` and `<url|label>`). The top-level `text` has no such switch (`parse` defaults to
  `none`, which links no names): a bare URL typed by a user may still be auto-linked there, but
  it shows its own address — it can never hide behind a label.
* plain_text objects show text as it is; we send `emoji: false` so `:codes:` stay text.
  Values still go through `plain` (one line, no invisible characters, clipped).
* Links: only `https` URLs with a plain host become `<url|label on host>`, so the reader sees
  where a link goes ("View the run on github.com"); anything else is shown as literal text.
* Mentions: only strings shaped like Slack ids (`U…`/`W…` users, `S…` user groups) become
  mentions; anything else is literal text.
* Limits (Block Kit): text objects 3 000 characters, section fields 2 000 (at most 10),
  header text 150, button text 75, 50 blocks in a message, 100 in a modal or the Home tab.
  Lengths are counted in UTF-16 code units (an emoji counts 2), which is never less than what
  Slack counts. Clipping never cuts an `&…;` entity or a `<…>` token in half.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

MAX_TEXT = 3000  # a text object (section text, context element)
MAX_FIELD = 2000  # one section field
MAX_FIELDS = 10
MAX_HEADER = 150
MAX_BUTTON = 75
MAX_MESSAGE_BLOCKS = 50
MAX_VIEW_BLOCKS = 100  # modals and the Home tab
MAX_CONTEXT_ELEMENTS = 10
#: Text-only posts (thread notes, DMs, alerts): Slack advises at most 4 000 characters.
MAX_MESSAGE_TEXT = 3000

ELLIPSIS = "…"
EMPTY = "—"

# Characters that take no room or reorder what follows (format, bidi, fillers): Cf covers most;
# these are the default-ignorable or blank ones Unicode files elsewhere.
_INVISIBLE = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u180e\u2800\u3164\uffa0")
_MAX_MARKS = 3  # combining marks kept after one base character
# Markers Slack formats with (fullwidth forms format too) and the look-alikes shown instead:
# ∗ asterisk operator, ˍ modifier letter low macron, ∼ tilde operator, ˋ modifier letter grave
# accent; a fullwidth > would quote a line: › single right-pointing angle quotation mark.
_LOOKALIKE = str.maketrans(
    "*\uff0a_\uff3f~\uff5e`\uff40\uff1e", "\u2217\u2217\u02cd\u02cd\u223c\u223c\u02cb\u02cb\u203a"
)
_BACKTICKS = str.maketrans("`\uff40", "\u02cb\u02cb")
_ENTITY = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
# `:name:` with at least one letter — an emoji code; `12:30:45` and URLs are left alone.
_EMOJI_CODE = re.compile(r":(?=[^\s:/.&<>]*[^\W\d_][^\s:/.&<>]*:)")
_USER_ID = re.compile(r"[UW][A-Z0-9]{2,20}")
_GROUP_ID = re.compile(r"S[A-Z0-9]{2,20}")
#: What an https URL may hold (RFC 3986 characters, without `<`, `>`, `|` and spaces).
_URL_CHARS = re.compile(r"[!#$%&'()*+,./0-9:;=?@A-Z\[\]_a-z~-]+")
_HOST = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?")


def width(text: str) -> int:
    """Length as Slack may count it: UTF-16 code units."""
    return len(text) + sum(1 for c in text if ord(c) > 0xFFFF)


def _cap(limit: int) -> int:
    # enough raw input for `limit` visible characters even after collapsing whitespace runs
    return 4 * limit + 64


def clean(value: object, limit: int | None = None) -> str:
    """`value` as one line of visible text: every newline, control, zero-width, bidi and other
    invisible character is one space, runs of spaces are one, lone surrogates are U+FFFD, at most
    three combining marks follow a character. `limit` bounds the work on huge input."""
    raw = "" if value is None else str(value)
    if limit is not None and len(raw) > _cap(limit):
        raw = raw[: _cap(limit)]
    out: list[str] = []
    marks = 0
    # a lone surrogate (not text; Slack's JSON would refuse it) becomes U+FFFD
    raw = raw.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    for ch in unicodedata.normalize("NFC", raw):
        cat = unicodedata.category(ch)
        if cat in ("Mn", "Me"):
            marks += 1
            if marks > _MAX_MARKS:
                continue
        else:
            marks = 0
        if (cat[0] in ("C", "Z") and cat not in ("Co", "Cn")) or ch in _INVISIBLE:
            ch = " "
        if ch == " " and (not out or out[-1] == " "):
            continue
        out.append(ch)
    return "".join(out).strip()


def _clip(tokens: list[str], limit: int, truncated: bool = False) -> str:
    """Join `tokens` (each an indivisible piece: one character or one entity) within `limit`."""
    if not truncated and sum(width(t) for t in tokens) <= limit:
        return "".join(tokens)
    room = limit - width(ELLIPSIS)
    out: list[str] = []
    for t in tokens:
        room -= width(t)
        if room < 0:
            break
        out.append(t)
    return "".join(out).rstrip() + ELLIPSIS


def plain(value: object, limit: int) -> str:
    """Text for a plain_text object: one clean line within `limit`, never empty."""
    raw = "" if value is None else str(value)
    text = clean(raw, limit)
    cut = len(raw) > _cap(limit)
    return _clip(list(text), limit, cut) if text else EMPTY


def literal(value: object, limit: int) -> str:
    """Free text (a reason, an error) for mrkdwn that shows as typed and can do nothing else: no
    mention, link, date, bold, italic, strike, code, quote, emoji code or extra line. At most
    `limit` long (escaped), with `…` when cut. Empty in, empty out."""
    raw = "" if value is None else str(value)
    text = clean(raw, limit)
    if not text:
        return ""
    text = _EMOJI_CODE.sub("\u2236", text).translate(_LOOKALIKE)
    if text.startswith(">"):
        text = "\u203a" + text[1:]  # a leading > would quote the line
    return _clip([_ENTITY.get(c, c) for c in text], limit, len(raw) > _cap(limit))


def code_text(value: object, limit: int) -> str:
    """What goes inside a code span or block: exact characters (`deploy_prod`, `feature/a_b`
    stay as they are: Slack formats nothing inside code), except that a backtick, which would
    close the code, becomes ˋ; one line, entities escaped, within `limit`."""
    raw = "" if value is None else str(value)
    text = clean(raw, limit).translate(_BACKTICKS)
    return _clip([_ENTITY.get(c, c) for c in text], limit, len(raw) > _cap(limit)) if text else ""


def code(value: object, limit: int) -> str:
    """An identifier people compare or copy (a request id, action, ref, repository, file) as an
    inline code span; `—` when empty."""
    text = code_text(value, limit)
    return f"`{text}`" if text else EMPTY


def is_slack_id(value: object) -> bool:
    """Shaped like a Slack user (U…/W…) or user-group (S…) id."""
    s = "" if value is None else str(value)
    return bool(_USER_ID.fullmatch(s) or _GROUP_ID.fullmatch(s))


def mention(slack_id: object) -> str:
    """A live mention for a string shaped like a Slack user or user-group id; anything else is
    shown as literal text."""
    s = "" if slack_id is None else str(slack_id)
    if not is_slack_id(s):
        return literal(s, 80) or EMPTY
    return f"<!subteam^{s}>" if s.startswith("S") else f"<@{s}>"


def link(url: object, label: str) -> str:
    """`<url|label on host>` for an https URL with a plain host; otherwise `label: url` as
    literal text (http, javascript:, credentials in the URL, odd characters: never a link)."""
    u = "" if url is None else str(url)
    host = _https_host(u)
    if host is None:
        return f"{literal(label, 60)}: {literal(u, 300) or EMPTY}"
    return f"<{u.replace('&', '&amp;')}|{literal(label, 60)} on {literal(host, 260)}>"


def _https_host(url: str) -> str | None:
    if len(url) > 2000 or not _URL_CHARS.fullmatch(url):
        return None
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname or ""
    if parts.scheme != "https" or parts.username is not None or not _HOST.fullmatch(host) or ".." in host:
        return None
    return f"{host}:{port}" if port else host


def date(dt: datetime) -> str:
    """A time every reader sees in their own time zone, with a UTC fallback (jit's own token)."""
    ts = int(dt.timestamp())
    return f"<!date^{ts}^{{date_short_pretty}} {{time_secs}}|{dt.strftime('%Y-%m-%d %H:%M:%S UTC')}>"


def fit(text: str, limit: int) -> str:
    """Clip mrkdwn that jit composed (templates plus the pieces above) to `limit` without cutting
    an `&…;` entity or a `<…>` token."""
    if width(text) <= limit:
        return text
    room = limit - width(ELLIPSIS)
    end = 0
    for i, c in enumerate(text):
        room -= width(c)
        if room < 0:
            break
        end = i + 1
    cut = text[:end]
    amp, semi = cut.rfind("&"), cut.rfind(";")
    if amp > semi and re.fullmatch(r"&[a-z]{0,4}", cut[amp:]):
        cut = cut[:amp]
    lt, gt = cut.rfind("<"), cut.rfind(">")
    if lt > gt:
        cut = cut[:lt]
    return cut.rstrip() + ELLIPSIS


# ------------------------------------------------------------------ Block Kit text objects


def mrkdwn(text: str, limit: int = MAX_TEXT) -> dict[str, Any]:
    """A mrkdwn text object; `verbatim` so Slack links nothing we did not mark up ourselves."""
    return {"type": "mrkdwn", "text": fit(text, limit) or EMPTY, "verbatim": True}


def plain_text(value: object, limit: int = MAX_TEXT) -> dict[str, Any]:
    """A plain_text object: shown as is, `:codes:` not turned into emoji."""
    return {"type": "plain_text", "text": plain(value, limit), "emoji": False}


def section(text: str, accessory: dict[str, Any] | None = None) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "section", "text": mrkdwn(text)}
    if accessory:
        block["accessory"] = accessory
    return block


def fields(items: list[str]) -> dict[str, Any]:
    """A section of up to ten mrkdwn fields (two columns)."""
    return {"type": "section", "fields": [mrkdwn(f, MAX_FIELD) for f in items[:MAX_FIELDS]]}


def context(text: str) -> dict[str, Any]:
    return {"type": "context", "elements": [mrkdwn(text)]}


def header(value: object) -> dict[str, Any]:
    return {"type": "header", "text": plain_text(value, MAX_HEADER)}


def button(action_id: str, label: str, value: str, style: str | None = None, **extra: Any) -> dict[str, Any]:
    b: dict[str, Any] = {
        "type": "button",
        "action_id": action_id,
        "text": plain_text(label, MAX_BUTTON),
        "value": value,
    }
    if style:
        b["style"] = style
    b.update(extra)
    return b
