"""Dates in aggregate keys, and the arithmetic of neighbours: the one place that
reads a key's date and writes a shifted one.

A key's date is its first valid ISO date: `YYYY-MM-DD`, optionally followed by
`THH:MM`, `:SS` and `Z`, never part of a longer number, always read as UTC; an
invalid one (`2026-13-40`) is skipped. The date's *shape* is how it is written
(date only; with minutes; with seconds; each with or without `Z`), and its *unit*
the smallest step that shape can write (a day, a minute, a second). A key without
a date has no neighbours.

The neighbour of a key at an offset is the key with its date text replaced by the
shifted date, written in the same shape: `run-2026-03-01` at -1d is
`run-2026-02-28`; `2026-11-26T05:00Z` at -1h is `2026-11-26T04:00Z`. An offset
that is not a whole number of the key's unit covers nothing (-6h of a date-only
key). A window is every key of the same template and shape whose date lies
between two shifted dates, both included.

The *template* (the key with its date text replaced by TEMPLATE_MARK) and the
shape, stored with each aggregate, make a neighbour one exact key and a window a
date range on an index.
"""

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

TEMPLATE_MARK = "*"  # not a key character (aggregates/values.py)

_DATE = re.compile(
    r"(?<![0-9])(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2}))?)?(Z?)(?![0-9])"
)
# Shapes: what follows the date, and the unit it can write.
DAY, MINUTE, SECOND = "day", "minute", "second"
_UNIT = {
    DAY: timedelta(days=1),
    MINUTE: timedelta(minutes=1),
    SECOND: timedelta(seconds=1),
}
_FORMAT = {DAY: "%Y-%m-%d", MINUTE: "%Y-%m-%dT%H:%M", SECOND: "%Y-%m-%dT%H:%M:%S"}


@dataclass(frozen=True)
class KeyDate:
    """A key's date: where it sits in the key, how it is written, and when."""

    template: str  # the key, its date text replaced by TEMPLATE_MARK
    shape: str  # DAY, MINUTE or SECOND, + "Z" when written with one
    at: datetime  # UTC

    @property
    def unit(self) -> timedelta:
        return _UNIT[self.shape.rstrip("Z")]

    def write(self, at: datetime) -> str | None:
        """The key with `at` for its date, in the same shape; None when `at`
        falls outside the years a key can write (1-9999)."""
        if at.year < 1 or at.year > 9999:
            return None
        text = at.strftime(_FORMAT[self.shape.rstrip("Z")])
        if at.year < 1000:  # strftime does not pad every platform's %Y
            text = f"{at.year:04d}" + text[text.index("-") :]
        if self.shape.endswith("Z"):
            text += "Z"
        return self.template.replace(TEMPLATE_MARK, text, 1)

    def shift(self, offset: timedelta) -> datetime | None:
        """This date moved by `offset`; None past the years there are."""
        try:
            return self.at + offset
        except OverflowError:
            return None

    def clipped(self, offset: timedelta) -> datetime:
        """This date moved by `offset`, or the first or last moment there is."""
        shifted = self.shift(offset)
        if shifted is not None:
            return shifted
        edge = datetime.min if offset < timedelta(0) else datetime.max
        return edge.replace(tzinfo=UTC)


def key_date(key: str) -> KeyDate | None:
    """The first valid date in `key`, with its template and shape; None if none."""
    start = 0
    while (match := _DATE.search(key, start)) is not None:
        year, month, day, hour, minute, second, zone = match.groups()
        try:
            at = datetime(
                int(year),
                int(month),
                int(day),
                int(hour or 0),
                int(minute or 0),
                int(second or 0),
                tzinfo=UTC,
            )
        except ValueError:
            start = match.start() + 1
            continue
        shape = DAY if hour is None else MINUTE if second is None else SECOND
        template = key[: match.start()] + TEMPLATE_MARK + key[match.end() :]
        return KeyDate(template, shape + zone, at)
    return None


def key_moment(key: str) -> datetime | None:
    """Just the date of `key`, as UTC (a rule's `key_date` deadline counts from
    it); None if the key has none."""
    found = key_date(key)
    return found.at if found else None


def neighbour(key: str, offset: timedelta) -> str | None:
    """The key at `offset` from `key`: its date shifted, written in the same shape.
    None when the key has no date, when the offset is not a whole number of the
    key's unit, or when the shifted date cannot be written."""
    found = key_date(key)
    if found is None or offset % found.unit:
        return None
    shifted = found.shift(offset)
    return found.write(shifted) if shifted is not None else None


@dataclass(frozen=True)
class Window:
    """The keys a window reference covers from one key: those with this template
    and shape whose date lies in [first, last]."""

    template: str
    shape: str
    first: datetime
    last: datetime

    def covers(self, other: KeyDate | None) -> bool:
        return (
            other is not None
            and other.template == self.template
            and other.shape == self.shape
            and self.first <= other.at <= self.last
        )


def window(key: str, lower: timedelta, upper: timedelta) -> Window | None:
    """The window [key + lower, key + upper]; None when the key has no date. The
    bounds are clipped to the dates there are."""
    found = key_date(key)
    if found is None:
        return None
    return Window(
        found.template, found.shape, found.clipped(lower), found.clipped(upper)
    )
