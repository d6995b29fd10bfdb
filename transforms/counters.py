"""Buffered counters (the original's EsBufferFilter): one document per (counter, key, event-time interval).

Instead of indexing every hit, a counter keeps count/sum/mean/min/max/stddev of a field (or just the count)
per fixed interval of *event* time, optionally per key (e.g. per area), and emits one document per interval
with a deterministic id. Each batch is pre-aggregated in place (docs/architecture.md); Beam combines the partials per
key in fixed windows, so a backfill and a stream of the same events give the same numbers. The original used
processing-time intervals, stamped each document with its last event's time, computed a sample stddev of 0
for n <= 2 and raced inject against flush; none of that is kept.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import apache_beam as beam
from apache_beam.transforms import window

from transforms.decorate import IndexNamer
from transforms.event import Event, EventBatch
from transforms.fields import key_reader, reader
from transforms.keys import result_id
from transforms.lateness import DEFAULT_ALLOWED_LATENESS_S, Late, SlotWindows, converging, cutoff
from transforms.partials import PartialsDoFn
from transforms.times import iso_ms


class Acc(NamedTuple):
    """A counter's partial: events counted, and Welford's running stats of the numeric values among them."""

    events: int
    n: int
    total: float
    mean: float
    m2: float
    lo: float
    hi: float


EMPTY = Acc(0, 0, 0.0, 0.0, 0.0, math.inf, -math.inf)
Parts = dict[tuple[str | None, int], Acc]  # (key, interval start ms) -> partial


def add(acc: Acc, value: Any) -> Acc:
    """Count one event, and its value when it is a number (Welford's update)."""
    events, n, total, mean, m2, lo, hi = acc
    if type(value) not in (int, float):
        return acc._replace(events=events + 1)
    n += 1
    delta = value - mean
    mean += delta / n
    return Acc(events + 1, n, total + value, mean, m2 + delta * (value - mean), min(lo, value), max(hi, value))


def merge(a: Acc, b: Acc) -> Acc:
    """Combine two partial accumulators (Chan et al.'s parallel variance)."""
    if not b.n:
        return a._replace(events=a.events + b.events)
    if not a.n:
        return b._replace(events=a.events + b.events)
    n = a.n + b.n
    delta = b.mean - a.mean
    mean = a.mean + delta * b.n / n
    m2 = a.m2 + b.m2 + delta * delta * a.n * b.n / n
    return Acc(a.events + b.events, n, a.total + b.total, mean, m2, min(a.lo, b.lo), max(a.hi, b.hi))


@dataclass(frozen=True)
class CounterSpec:
    name: str
    interval_s: int
    field: str | None = None
    by: str | None = None
    lateness_s: float = DEFAULT_ALLOWED_LATENESS_S


def pre_aggregate(batch: EventBatch, spec: CounterSpec, get_value: Callable[[Event], Any] | None,
                  get_key: Callable[[Event], Any] | None,
                  parts: Parts | None = None) -> tuple[Parts, int]:
    """Add a batch to partial accumulators per (key, interval start in ms); events of intervals closed for the
    batch (transforms/lateness.py) are left out and counted: (parts, late events)."""
    width = spec.interval_s * 1000
    parts = {} if parts is None else parts
    closed = cutoff(batch.watermark_ms, int(spec.lateness_s * 1000))
    late = 0
    for event in batch.events:
        start = event.ts - event.ts % width
        if closed is not None and start + width <= closed:
            late += 1
            continue
        slot = (get_key(event) if get_key is not None else None, start)
        value = get_value(event) if get_value is not None else None
        parts[slot] = add(parts.get(slot, EMPTY), value)
    return parts, late


class CounterFolder:
    """The counter's per-bundle fold (transforms/partials.py): one accumulator per (key, interval)."""

    def __init__(self, spec: CounterSpec) -> None:
        self.spec = spec
        self.branches: Sequence[str] = (f"counters/{spec.name}",)
        self._value = reader(spec.field) if spec.field else None
        self._key = key_reader(spec.by)

    def fold(self, batch: EventBatch, parts: Parts, late: dict[str, Late]) -> None:
        late[self.branches[0]].add(pre_aggregate(batch, self.spec, self._value, self._key, parts)[1])

    def emit(self, parts: Parts) -> Iterable[tuple[Any, Acc, float]]:
        return ((slot, acc, slot[1] / 1000) for slot, acc in parts.items())


def interval_bounds(width_ms: int) -> Callable[[tuple[str | None, int]], tuple[int, int]]:
    """A (key, interval start) slot's event-time window."""
    def bounds(slot: tuple[str | None, int]) -> tuple[int, int]:
        return slot[1], slot[1] + width_ms

    return bounds


def counter_document(spec: CounterSpec, key: str | None, start_ms: int, acc: Acc, namer: IndexNamer) -> dict:
    """The one document of an interval; `_id` is the same for the same counter, key and interval."""
    events, n, total, mean, m2, lo, hi = acc
    doc: dict[str, Any] = {
        "_id": result_id("counter", spec.name, key, start_ms),
        "_index": namer(start_ms),
        "counter": spec.name,
        "key": key,
        "start": iso_ms(start_ms),
        "_t": start_ms,
        "interval_s": spec.interval_s,
        "count": events,
    }
    if spec.field is not None:
        doc.update({
            "field": spec.field, "values": n, "sum": total if n else None, "mean": mean if n else None,
            "min": lo if n else None, "max": hi if n else None,
            "stddev": math.sqrt(m2 / (n - 1)) if n > 1 else (0.0 if n else None),  # sample stddev
        })
    return doc


class _MergeFn(beam.CombineFn):
    def create_accumulator(self) -> Acc:
        return EMPTY

    def add_input(self, acc: Acc, partial: Acc) -> Acc:
        return merge(acc, partial)

    def merge_accumulators(self, accs: Any) -> Acc:
        out = EMPTY
        for acc in accs:
            out = merge(out, acc)
        return out

    def extract_output(self, acc: Acc) -> Acc:
        return acc


class BufferedCounter(beam.PTransform):
    """EventBatch (a route's) -> one counter document (dict with `_id`, `_index`) per key and interval."""

    def __init__(self, spec: CounterSpec, namer: IndexNamer) -> None:
        super().__init__(f"Counter[{spec.name}]")
        self._spec, self._namer = spec, namer

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        spec, namer = self._spec, self._namer
        partials = batches | "PreAggregate" >> beam.ParDo(PartialsDoFn(lambda: CounterFolder(spec), 100_000))
        if not batches.is_bounded:
            # The interval is in the key, so a bounded run needs no windows (and the local runner's windowed
            # GroupByKey costs ~0.4 ms per key); an unbounded one windows by interval to fire at the watermark
            # and again for late partials (transforms/lateness.py).
            partials = partials | "Intervals" >> converging(SlotWindows(interval_bounds(spec.interval_s * 1000)),
                                                            spec.lateness_s)
        docs = (
            partials
            | "Combine" >> beam.CombinePerKey(_MergeFn())
            | "Document" >> beam.MapTuple(lambda slot, acc: counter_document(spec, slot[0], slot[1], acc, namer))
        )
        return docs if batches.is_bounded else docs | "Global" >> beam.WindowInto(window.GlobalWindows())
