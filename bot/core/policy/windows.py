"""Change windows: when an action may be requested at all (`mon-fri 09:00-18:00 Europe/Paris`).

A window is a set of weekdays, a wall-clock range and an IANA time zone (UTC when left out).
Times are wall-clock times in that zone, so a 09:00 opening stays 09:00 across daylight-saving
changes. A range whose end is not after its start runs past midnight (`fri 22:00-02:00` is
Friday 22:00 to Saturday 02:00); `24:00` is the end of the day. A start time that does not
exist on a spring-forward day (02:30 in Paris on the last Sunday of March) moves forward by the
length of the gap (03:30); on a fall-back day an ambiguous time means its first occurrence.

All arithmetic is done on absolute (UTC) instants: Python compares two datetimes that share a
tzinfo by wall clock, which is wrong across a DST change.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_ALIASES = {"daily": tuple(range(7)), "weekdays": tuple(range(5)), "weekends": (5, 6)}
_SPEC = re.compile(
    r"^\s*(?P<days>[A-Za-z,\-*]+)\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})"
    r"(?:\s+(?P<tz>[A-Za-z0-9_+\-/]+))?\s*$"
)


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # 0 = Monday
    start: time
    end: time | None  # None: 24:00
    tz: ZoneInfo
    spec: str

    def _bounds(self, day: date) -> tuple[datetime, datetime]:
        """The absolute start and end of this window when it opens on local `day`."""
        start = _instant(day, self.start, self.tz)
        if self.end is None:
            end = _instant(day + timedelta(days=1), time(0, 0), self.tz)
        elif self.end <= self.start:
            end = _instant(day + timedelta(days=1), self.end, self.tz)
        else:
            end = _instant(day, self.end, self.tz)
        return start, end

    def is_open(self, at: datetime) -> bool:
        local_day = at.astimezone(self.tz).date()
        at = at.astimezone(UTC)
        for back in (0, 1):  # a window opened yesterday may still be open (past midnight)
            day = local_day - timedelta(days=back)
            if day.weekday() in self.days:
                start, end = self._bounds(day)
                if start <= at < end:
                    return True
        return False

    def open_until(self, at: datetime) -> datetime | None:
        """When the opening that contains `at` closes; None when closed at `at`."""
        local_day = at.astimezone(self.tz).date()
        at = at.astimezone(UTC)
        ends = []
        for back in (0, 1):
            day = local_day - timedelta(days=back)
            if day.weekday() in self.days:
                start, end = self._bounds(day)
                if start <= at < end:
                    ends.append(end)
        return max(ends) if ends else None

    def next_opening(self, after: datetime) -> datetime | None:
        local_day = after.astimezone(self.tz).date()
        after = after.astimezone(UTC)
        for ahead in range(0, 9):
            day = local_day + timedelta(days=ahead)
            if day.weekday() in self.days:
                start, _ = self._bounds(day)
                if start > after:
                    return start
        return None


def _instant(day: date, wall: time, tz: ZoneInfo) -> datetime:
    """The UTC instant of a local wall-clock time (zoneinfo's fold=0 rules, see the module doc)."""
    return datetime.combine(day, wall, tzinfo=tz).astimezone(UTC)


def _parse_days(text: str) -> frozenset[int]:
    if text in ("*",):
        return frozenset(range(7))
    if text in _ALIASES:
        return frozenset(_ALIASES[text])
    out: set[int] = set()
    for part in text.split(","):
        if "-" in part:
            a, _, b = part.partition("-")
            if a not in DAYS or b not in DAYS:
                raise ValueError(f"unknown day in {part!r} (use mon, tue, wed, thu, fri, sat, sun)")
            i, j = DAYS.index(a), DAYS.index(b)
            out.update(range(i, j + 1) if i <= j else [*range(i, 7), *range(0, j + 1)])
        elif part in DAYS:
            out.add(DAYS.index(part))
        else:
            raise ValueError(f"unknown day {part!r} (use mon, tue, wed, thu, fri, sat, sun)")
    return frozenset(out)


def _parse_time(text: str, *, end: bool) -> time | None:
    h, _, m = text.partition(":")
    hour, minute = int(h), int(m)
    if end and hour == 24 and minute == 0:
        return None
    if not (0 <= hour <= 23 and 0 <= minute <= 59):
        raise ValueError(f"{text!r} is not a time of day (00:00 to 23:59, or 24:00 as an end)")
    return time(hour, minute)


def parse_window(spec: str) -> Window:
    """`mon-fri 09:00-18:00 Europe/Paris`. Raises ValueError with a readable message."""
    if not isinstance(spec, str):
        raise ValueError("a window is a string like 'mon-fri 09:00-18:00 Europe/Paris'")
    m = _SPEC.match(spec)
    if not m:
        raise ValueError(f"{spec!r} is not a window (use e.g. 'mon-fri 09:00-18:00 Europe/Paris')")
    days = _parse_days(m.group("days").lower())
    start = _parse_time(m.group("start"), end=False)
    end = _parse_time(m.group("end"), end=True)
    assert start is not None
    if end is not None and end == start:
        raise ValueError(f"{spec!r}: the window starts and ends at the same time")
    tz_name = m.group("tz") or "UTC"
    try:
        tz = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {tz_name!r} (use an IANA name like Europe/Paris)") from None
    return Window(days=days, start=start, end=end, tz=tz, spec=spec.strip())


@dataclass(frozen=True)
class Windows:
    """An action's windows: open when any one of them is."""

    windows: tuple[Window, ...]

    @classmethod
    def parse(cls, specs: list[str]) -> Windows:
        return cls(tuple(parse_window(s) for s in specs))

    def __bool__(self) -> bool:
        return bool(self.windows)

    def is_open(self, at: datetime) -> bool:
        return not self.windows or any(w.is_open(at) for w in self.windows)

    def open_index(self, at: datetime) -> int | None:
        """Which window (its place in the list) is open at `at`; None when none is."""
        return next((i for i, w in enumerate(self.windows) if w.is_open(at)), None)

    def open_until(self, at: datetime) -> datetime | None:
        """When the windows stop being open, counting back-to-back openings as one; None when
        they are closed at `at`. (Without windows an action is always open: check `__bool__`.)"""
        until = None
        cursor = at
        for _ in range(16):  # adjacent windows chain; a week of them is plenty
            ends = [e for w in self.windows if (e := w.open_until(cursor)) is not None]
            if not ends:
                break
            until = max(ends)
            cursor = until
        return until

    def next_opening(self, after: datetime) -> datetime | None:
        """The earliest instant after `after` at which a window opens (None: never)."""
        found = [t for w in self.windows if (t := w.next_opening(after)) is not None]
        return min(found) if found else None

    @property
    def specs(self) -> list[str]:
        return [w.spec for w in self.windows]
