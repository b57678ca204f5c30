"""The one clock: every "now" in jit comes from here so tests can freeze it (freezegun)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta


def now() -> datetime:
    return datetime.now(UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def now_ms() -> int:
    """Milliseconds since the epoch, rounded down (never ahead of the real time, so nothing due at
    a millisecond runs before it): what the due queue scores and the scheduler waits for. Exact
    integer arithmetic, so a frozen clock (freezegun) reads exactly the time it was frozen at."""
    return (now() - _EPOCH) // _MS


def to_ms(dt: datetime) -> int:
    return int(round(dt.timestamp() * 1000))


def from_ms(ms: int | float | str) -> datetime:
    return datetime.fromtimestamp(int(float(ms)) / 1000, UTC)


def rfc3339(dt: datetime | None) -> str | None:
    """`2026-11-25T21:40:00.123Z`: UTC with milliseconds, the one time format in JSON bodies."""
    if dt is None:
        return None
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def rfc3339_ms(ms: int | str | None) -> str | None:
    return None if ms in (None, "") else rfc3339(from_ms(ms))


#: A duration as text (`90s`, `15m`, `2h`, `1d`, bare seconds); the OpenAPI document publishes it.
DURATION = re.compile(r"^\s*(\d{1,12})\s*([smhd]?)\s*$")
#: The longest duration jit reads (longer ones are errors, not overflows): ten years.
MAX_DURATION_S = 10 * 366 * 86400
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: object) -> timedelta:
    """`90s`, `15m`, `2h`, `1d` or integer seconds. Raises ValueError with a readable message."""
    if isinstance(value, bool):
        raise ValueError("must be a duration like 90s, 15m, 2h or integer seconds")
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str) and (m := DURATION.match(value)):
        seconds = int(m.group(1)) * _UNIT[m.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration (use 90s, 15m, 2h or integer seconds)")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    if seconds > MAX_DURATION_S:
        raise ValueError("that duration is longer than ten years")
    return timedelta(seconds=seconds)


def human(td: timedelta | float) -> str:
    """`1h 5m`, `15m`, `42s`: durations as people read them in Slack."""
    seconds = int(td.total_seconds() if isinstance(td, timedelta) else td)
    if seconds < 0:
        seconds = 0
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h {m}m" if m else f"{h}h"
    if m:
        return f"{m}m {s}s" if s and m < 10 else f"{m}m"
    return f"{s}s"
