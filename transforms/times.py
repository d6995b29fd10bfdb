"""Time formatting and calendar periods (docs/architecture.md, "The ground floor"): one ISO formatter for
every result, one definition of a day, an ISO week and a month, in UTC or a timezone.
"""

from __future__ import annotations

import functools
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

PERIODS = ("day", "week", "month")
MS_PER_DAY = 86_400_000


def iso_ms(ms: int) -> str:
    """Epoch ms as ISO 8601 UTC with a `Z` (`2014-01-17T08:00:00Z`): the `start`/`end` of every result."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def utc_date(day: int) -> str:
    """Days since the epoch as `YYYY-MM-DD` (the `date=` partition folders)."""
    return datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%d")


def utc_day(ts_ms: int) -> date:
    """The UTC calendar day of an event time."""
    return datetime.fromtimestamp(ts_ms / 1000, UTC).date()


def period_start(day: date, period: str) -> date:
    """The first day of the calendar period holding `day` (ISO weeks start on Monday)."""
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def next_period(start: date, period: str) -> date:
    """The first day of the period after the one starting on `start`."""
    if period == "day":
        return start + timedelta(days=1)
    if period == "week":
        return start + timedelta(days=7)
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)


@functools.lru_cache(maxsize=4096)
def period_bounds(start: str, period: str, tz: str = "UTC") -> tuple[int, int]:
    """A calendar period (its first day, ISO) as [start, end) epoch ms: local midnights in `tz`. Cached: the
    funnel asks for every row, and a stream has few periods open at a time."""
    zone = UTC if tz == "UTC" else ZoneInfo(tz)
    first = date.fromisoformat(start)
    after = next_period(first, period)
    return tuple(int(datetime(d.year, d.month, d.day, tzinfo=zone).timestamp() * 1000)  # type: ignore[return-value]
                 for d in (first, after))


class LocalDays:
    """Event time (ms) -> local calendar day in a timezone, cached per quarter hour (every real UTC offset is
    a multiple of 15 minutes)."""

    def __init__(self, tz: str = "UTC") -> None:
        self.zone = UTC if tz == "UTC" else ZoneInfo(tz)
        self._cache: dict[int, date] = {}

    def __call__(self, ts_ms: int) -> date:
        slot = ts_ms // 900_000
        day = self._cache.get(slot)
        if day is None:
            day = datetime.fromtimestamp(slot * 900, self.zone).date()
            self._cache[slot] = day
        return day
