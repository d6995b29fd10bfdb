"""HyperLogLog cardinality (the original's CardinalityFilter/Output, fixed): distinct values per counter, key
and calendar period, without storing the values.

Sketches are Apache DataSketches HLL (README: chosen over the `hyperloglog` package by measured update speed,
merge speed, size and accuracy). Every value is hashed by the sketch (MurmurHash3 of its text: `1` and `"1"`
are the same user); the original fed raw integers to its counter and its uid counts were wrong. Each bundle is
folded into one sketch per (key, period) and Beam unions them (`transforms.sketches`).
The results keep their sketch (base64), so MAU is the union of the daily sketches of a month, computed later
by `python -m pipelines.cardinality`.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from transforms.counters import key_reader, reader, text_of
from transforms.decorate import fingerprint
from transforms.event import Event
from transforms.lateness import DEFAULT_ALLOWED_LATENESS_S
from transforms.sketches import Hll, SketchPerSlot

PERIODS = ("day", "week", "month")
DEFAULT_LG_K = 14  # 16384 buckets: ~0.8% standard error, 12 kB per sketch


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


def period_bounds(start: str, period: str, tz: str = "UTC") -> tuple[int, int]:
    """A calendar period (its first day, ISO) as [start, end) epoch ms: local midnights in `tz`."""
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


@dataclass(frozen=True)
class CardinalitySpec:
    name: str
    field: str
    by: str | None = None
    periods: tuple[str, ...] = PERIODS
    timezone: str = "UTC"
    lg_k: int = DEFAULT_LG_K
    lateness_s: float = DEFAULT_ALLOWED_LATENESS_S


def slot_bounds(spec: CardinalitySpec, slot: tuple) -> tuple[int, int]:
    """A (key, period, start) slot's event-time window."""
    return period_bounds(slot[2], slot[1], spec.timezone)


def slots_of(spec: CardinalitySpec) -> Callable[[Event], Iterator[tuple[tuple, str]]]:
    """Per event: a (key, period, period start) slot per configured period, and the value's text."""
    get_value = reader(spec.field)
    get_key = key_reader(spec.by)
    days = LocalDays(spec.timezone)
    periods = spec.periods

    def slots(event: Event) -> Iterator[tuple[tuple, str]]:
        text = text_of(get_value(event))  # 1 and "1" are the same user
        if text is None:
            return
        key, day = get_key(event), days(event.ts)
        for period in periods:
            yield (key, period, period_start(day, period).isoformat()), text

    return slots


def result(spec: CardinalitySpec, slot: tuple, sketch: Any, blob: bytes) -> dict[str, Any]:
    key, period, start = slot
    return {
        "_id": fingerprint(f"cardinality\0{spec.name}\0{key}\0{period}\0{start}"),
        "counter": spec.name, "field": spec.field, "key": key, "period": period, "start": start,
        "timezone": spec.timezone, "estimate": round(sketch.get_estimate(), 3),
        "lower_bound": round(sketch.get_lower_bound(2), 3), "upper_bound": round(sketch.get_upper_bound(2), 3),
        "sketch": base64.b64encode(blob).decode("ascii"),
    }


class Cardinality(SketchPerSlot):
    """EventBatch (a route's) -> one result per (key, period, start): estimate, bounds and the sketch."""

    def __init__(self, spec: CardinalitySpec) -> None:
        super().__init__(f"Cardinality[{spec.name}]", Hll(spec.lg_k), functools.partial(slots_of, spec),
                         functools.partial(result, spec), functools.partial(slot_bounds, spec), spec.lateness_s)
