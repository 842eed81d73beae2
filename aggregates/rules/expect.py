"""Expected keys: a rule's `expect`, the keys it evaluates when their moment
comes, whether anybody posted to them or not.

`{"every": "1d", "key": "%Y-%m-%d", "from": "2026-01-01"}` expects the key the
pattern writes for `from`, `from + every`, … — each at its moment. Without `from`,
the first moment is the start of the period the rule was created in (periods are
aligned to the Unix epoch, in UTC: a `1d` period starts at 00:00 UTC). The
pattern holds `%Y-%m-%d` literally, optionally followed by `T%H:%M`, `:%S` and
`Z`, between key characters, so that each expected key has a key date
(aggregates/keydates.py) and neighbours.

The engine keeps one cursor per rule (`Rule.expect_next`) and evaluates the
expected keys whose moment has come, a batch at a time: a clock tick never
materialises years of keys.
"""

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aggregates.conditions import format_duration
from aggregates.keydates import key_date

_KEY_CHARS = r"[A-Za-z0-9._:@+=-]*"
PATTERN = re.compile(_KEY_CHARS + r"%Y-%m-%d(T%H:%M(:%S)?)?Z?" + _KEY_CHARS)
MAX_KEYS = 100_000  # expected keys between `from` and now
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SAMPLE = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


class ExpectError(ValueError):
    pass


def unit_of(pattern: str) -> timedelta:
    """The smallest step the pattern writes (a day, a minute or a second); an
    ExpectError when the pattern does not write a key with a key date."""
    if not PATTERN.fullmatch(pattern):
        raise ExpectError(
            "must hold %Y-%m-%d, optionally followed by T%H:%M, :%S and Z, "
            "between key characters (A-Z a-z 0-9 . _ : @ + = -)"
        )
    found = key_date(_SAMPLE.strftime(pattern))
    unit = timedelta(days=1)
    if "%S" in pattern:
        unit = timedelta(seconds=1)
    elif "%M" in pattern:
        unit = timedelta(minutes=1)
    if found is None or found.at != _floor(_SAMPLE, unit) or found.unit != unit:
        raise ExpectError(
            "the date it writes must be the key's date: no digit right before "
            "or after it"
        )
    return unit


def parse_from(text: str) -> datetime:
    """An ISO date or date and time; UTC when it names no zone."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ExpectError(
            "must be an ISO date or date and time (2026-01-01, 2026-01-01T06:00Z)"
        ) from None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def period_start(moment: datetime, every: timedelta) -> datetime:
    """The start of the period `moment` falls in (aligned to the Unix epoch)."""
    return EPOCH + (moment - EPOCH) // every * every


def _floor(moment: datetime, unit: timedelta) -> datetime:
    return period_start(moment, unit)


@dataclass(frozen=True)
class Expectation:
    """A rule's expected keys."""

    pattern: str
    every: timedelta
    start: datetime | None  # `from`, if given

    def key(self, moment: datetime) -> str | None:
        """The key expected at `moment`; None past the years a key can write."""
        if not 1000 <= moment.year <= 9999:
            return None
        return moment.strftime(self.pattern)

    def first(self, now: datetime, *, history: bool) -> datetime:
        """The first moment to evaluate for a rule starting `now`: `from` (with
        history) or the first of its moments in the current period or later."""
        current = period_start(now, self.every)
        if self.start is None:
            return current
        if history or self.start >= current:
            return self.start
        periods = -((self.start - current) // self.every)  # rounded up
        return self.start + periods * self.every

    def moments(self, first: datetime, until: datetime, limit: int) -> list[datetime]:
        """At most `limit` moments from `first` up to `until`, both included."""
        found: list[datetime] = []
        moment = first
        while moment <= until and len(found) < limit:
            found.append(moment)
            moment += self.every
        return found

    def check(self, now: datetime) -> None:
        """The rule's bounds: its unit and MAX_KEYS keys from `from` to now."""
        unit = unit_of(self.pattern)
        if self.every < unit:
            every, per = (
                format_duration(span.total_seconds()) for span in (self.every, unit)
            )
            raise ExpectError(
                f"every {every} is finer than the key pattern writes (one key per "
                f"{per})"
            )
        if self.start is not None and (now - self.start) / self.every > MAX_KEYS:
            raise ExpectError(
                f"more than {MAX_KEYS:,} expected keys lie between from and now"
            )
