"""HyperLogLog cardinality (the original's CardinalityFilter/Output, fixed): distinct values per counter, key
and calendar period, without storing the values.

Sketches are Apache DataSketches HLL (README: chosen over the `hyperloglog` package by measured update speed,
merge speed, size and accuracy). Every value is hashed by the sketch (MurmurHash3 of its text: `1` and `"1"`
are the same user); the original fed raw integers to its counter and its uid counts were wrong. Each batch, and
then each bundle, is folded into one sketch per (key, period); Beam unions the serialized sketches per key.
The results keep their sketch (base64), so MAU is the union of the daily sketches of a month, computed later
by `python -m pipelines.cardinality`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import apache_beam as beam
import datasketches
from apache_beam.transforms import window
from apache_beam.utils.windowed_value import WindowedValue

from transforms.counters import reader
from transforms.decorate import fingerprint
from transforms.event import MISSING, Event, EventBatch

PERIODS = ("day", "week", "month")
HLL_TYPE = datasketches.tgt_hll_type.HLL_6
DEFAULT_LG_K = 14  # 16384 buckets: ~0.8% standard error, 12 kB per sketch


def period_start(day: date, period: str) -> date:
    """The first day of the calendar period holding `day` (ISO weeks start on Monday)."""
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


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


Slot = tuple[str | None, str, str]  # key, period, period start (ISO date)


def new_sketch(lg_k: int) -> Any:
    return datasketches.hll_sketch(lg_k, HLL_TYPE)


def sketch_values(batch: EventBatch, spec: CardinalitySpec, get_value: Callable[[Event], Any],
                  get_key: Callable[[Event], Any] | None, days: LocalDays, sketches: dict[Slot, Any]) -> int:
    """Fold a batch into one sketch per (key, period, start); returns how many events had no value."""
    missing = 0
    for event in batch.events:
        value = get_value(event)
        if value is MISSING or value is None or isinstance(value, dict | list):
            missing += 1
            continue
        key = None
        if get_key is not None:
            k = get_key(event)
            key = None if k is MISSING or k is None else str(k)
        day = days(event.ts)
        text = value if type(value) is str else str(value)
        for period in spec.periods:
            slot = (key, period, period_start(day, period).isoformat())
            sketch = sketches.get(slot)
            if sketch is None:
                sketch = sketches[slot] = new_sketch(spec.lg_k)
            sketch.update(text)
    return missing


def union_bytes(blobs: Sequence[bytes], lg_k: int) -> bytes:
    """The union of serialized sketches, serialized (sketch objects cannot be pickled, bytes can)."""
    union = datasketches.hll_union(lg_k)
    for blob in blobs:
        union.update(datasketches.hll_sketch.deserialize(blob))
    return union.get_result(HLL_TYPE).serialize_compact()


def result(spec: CardinalitySpec, slot: Slot, blob: bytes) -> dict[str, Any]:
    key, period, start = slot
    sketch = datasketches.hll_sketch.deserialize(blob)
    return {
        "_id": fingerprint(f"{spec.name}\0{key}\0{period}\0{start}"),
        "counter": spec.name, "field": spec.field, "key": key, "period": period, "start": start,
        "timezone": spec.timezone, "estimate": round(sketch.get_estimate(), 3),
        "lower_bound": round(sketch.get_lower_bound(2), 3), "upper_bound": round(sketch.get_upper_bound(2), 3),
        "sketch": base64.b64encode(blob).decode("ascii"),
    }


class _SketchDoFn(beam.DoFn):
    """One sketch per (key, period) per bundle; emitted serialized at the end of the bundle, or earlier when
    `max_slots` sketches are held (memory: keys x periods, never events)."""

    def __init__(self, spec: CardinalitySpec, max_slots: int = 2000) -> None:
        self._spec, self._max_slots = spec, max_slots

    def setup(self) -> None:
        self._value = reader(self._spec.field)
        self._key = reader(self._spec.by) if self._spec.by else None
        self._days = LocalDays(self._spec.timezone)

    def start_bundle(self) -> None:
        self._sketches: dict[Slot, Any] = {}

    def process(self, batch: EventBatch) -> Iterator[Any]:
        sketch_values(batch, self._spec, self._value, self._key, self._days, self._sketches)
        if len(self._sketches) >= self._max_slots:
            yield from self._emit()

    def finish_bundle(self) -> Iterator[Any]:
        yield from self._emit()

    def _emit(self) -> Iterator[WindowedValue]:
        sketches, self._sketches = self._sketches, {}
        for slot, sketch in sketches.items():
            when = datetime.fromisoformat(slot[2]).replace(tzinfo=UTC).timestamp()
            yield WindowedValue((slot, sketch.serialize_compact()), when, [window.GlobalWindow()])


class _UnionFn(beam.CombineFn):
    def __init__(self, lg_k: int) -> None:
        self._lg_k = lg_k

    def create_accumulator(self) -> list[bytes]:
        return []

    def add_input(self, acc: list[bytes], blob: bytes) -> list[bytes]:
        acc.append(blob)
        return [union_bytes(acc, self._lg_k)] if len(acc) >= 16 else acc

    def merge_accumulators(self, accs: Any) -> list[bytes]:
        return [union_bytes([b for acc in accs for b in acc], self._lg_k)]

    def extract_output(self, acc: list[bytes]) -> bytes:
        return union_bytes(acc, self._lg_k)


class Cardinality(beam.PTransform):
    """EventBatch (a route's) -> one result per (key, period, start): estimate, bounds and the sketch."""

    def __init__(self, spec: CardinalitySpec) -> None:
        super().__init__(f"Cardinality[{spec.name}]")
        self._spec = spec

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        spec = self._spec
        return (
            batches
            | "Sketch" >> beam.ParDo(_SketchDoFn(spec))
            | "Union" >> beam.CombinePerKey(_UnionFn(spec.lg_k))
            | "Result" >> beam.MapTuple(lambda slot, blob: result(spec, slot, blob))
        )
