"""Mergeable sketches per slot (key x window or period): the shared machinery of cardinality and statistics.

A bundle folds its events into one sketch per slot (memory: slots, never events) and emits them serialized
(DataSketches objects cannot be pickled, their bytes can); Beam unions the bytes per slot; a result function
turns each slot's final sketch into a document. Sketch kinds: HyperLogLog (distinct counts), KLL (quantiles,
histograms) and frequent items (top N).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import datasketches
from apache_beam.transforms import window

from transforms.event import Event, EventBatch
from transforms.lateness import DEFAULT_REFRESH_S, ConvergingCombine, Late, SlotWindows, cutoff
from transforms.partials import PartialsDoFn

Slot = tuple  # (key, ..., start ISO date or ms): its last item is when the slot starts


class SketchKind:
    """How to make, feed, (de)serialize and merge one kind of sketch."""

    def new(self) -> Any:
        raise NotImplementedError

    def update(self, sketch: Any, value: Any) -> None:
        sketch.update(value)

    def serialize(self, sketch: Any) -> bytes:
        return sketch.serialize()

    def deserialize(self, blob: bytes) -> Any:
        raise NotImplementedError

    def merge(self, blobs: Iterable[bytes]) -> bytes:
        merged = None
        for blob in blobs:
            if merged is None:
                merged = self.deserialize(blob)
            else:
                merged.merge(self.deserialize(blob))
        return self.serialize(merged if merged is not None else self.new())


class Hll(SketchKind):
    TYPE = datasketches.tgt_hll_type.HLL_6

    def __init__(self, lg_k: int) -> None:
        self.lg_k = lg_k

    def new(self) -> Any:
        return datasketches.hll_sketch(self.lg_k, self.TYPE)

    def serialize(self, sketch: Any) -> bytes:
        return sketch.serialize_compact()

    def deserialize(self, blob: bytes) -> Any:
        return datasketches.hll_sketch.deserialize(blob)

    def merge(self, blobs: Iterable[bytes]) -> bytes:
        union = datasketches.hll_union(self.lg_k)
        for blob in blobs:
            union.update(self.deserialize(blob))
        return union.get_result(self.TYPE).serialize_compact()


class Kll(SketchKind):
    def __init__(self, k: int = 200) -> None:
        self.k = k

    def new(self) -> Any:
        return datasketches.kll_doubles_sketch(self.k)

    def deserialize(self, blob: bytes) -> Any:
        return datasketches.kll_doubles_sketch.deserialize(blob)


class Frequent(SketchKind):
    def __init__(self, lg_max_size: int = 10) -> None:
        self.lg_max_size = lg_max_size

    def new(self) -> Any:
        return datasketches.frequent_strings_sketch(self.lg_max_size)

    def deserialize(self, blob: bytes) -> Any:
        return datasketches.frequent_strings_sketch.deserialize(blob)


SlotsOf = Callable[[Event], Iterable[tuple[Slot, Any]]]
Bounds = Callable[[Slot], tuple[int, int]]


class SketchFolder:
    """A bundle's events as one sketch per slot (transforms/partials.py), emitted serialized."""

    def __init__(self, branch: str, kind: SketchKind, slots_of: SlotsOf, bounds: Bounds, lateness_s: float) -> None:
        self.branches: Sequence[str] = (branch,)
        self._kind, self._slots_of, self._bounds = kind, slots_of, bounds
        self._lateness_ms = int(lateness_s * 1000)
        self._ends: dict[Slot, int] = {}

    def fold(self, batch: EventBatch, sketches: dict[Slot, Any], late_of: dict[str, Late]) -> None:
        kind, slots_of, counter = self._kind, self._slots_of, late_of[self.branches[0]]
        closed = cutoff(batch.watermark_ms, self._lateness_ms)
        for event in batch.events:
            late = False
            for slot, value in slots_of(event):
                sketch = sketches.get(slot)
                if sketch is None:
                    if closed is not None and self._end(slot) <= closed:
                        late = True
                        continue
                    sketch = sketches[slot] = kind.new()
                kind.update(sketch, value)
            counter.add(late)

    def _end(self, slot: Slot) -> int:
        end = self._ends.get(slot)
        if end is None:
            if len(self._ends) > 100_000:
                self._ends.clear()
            end = self._ends[slot] = self._bounds(slot)[1]
        return end

    def emit(self, sketches: dict[Slot, Any]) -> Iterator[tuple[Slot, bytes, float]]:
        for slot, sketch in sketches.items():  # the element's time: its window's start
            yield slot, self._kind.serialize(sketch), self._bounds(slot)[0] / 1000


class _MergeFn(beam.CombineFn):
    def __init__(self, kind: SketchKind) -> None:
        self._kind = kind

    def create_accumulator(self) -> list[bytes]:
        return []

    def add_input(self, acc: list[bytes], blob: bytes) -> list[bytes]:
        acc.append(blob)
        return [self._kind.merge(acc)] if len(acc) >= 16 else acc

    def merge_accumulators(self, accs: Any) -> list[bytes]:
        return [self._kind.merge(b for acc in accs for b in acc)]

    def extract_output(self, acc: list[bytes]) -> bytes:
        return self._kind.merge(acc)


class SketchPerSlot(beam.PTransform):
    """EventBatch -> result(slot, sketch) for every slot that events fall into.

    `slots_of` is a factory (called on the worker) of the per-event function giving (slot, value) pairs;
    `bounds(slot)` is the slot's event-time window [start, end) in ms. A slot's key holds its window or
    period, so a bounded run needs no windows; an unbounded one puts each slot in its window, with running
    panes every `refresh_s` and a corrected pane per late partial (transforms/lateness.py).
    """

    def __init__(self, label: str, kind: SketchKind, slots_of: Callable[[], SlotsOf],
                 result: Callable[[Slot, Any, bytes], dict[str, Any]], bounds: Bounds, lateness_s: float,
                 max_slots: int = 2000, refresh_s: float = DEFAULT_REFRESH_S) -> None:
        super().__init__(label)
        self._kind, self._slots_of, self._result, self._max_slots = kind, slots_of, result, max_slots
        self._bounds, self._lateness_s, self._refresh = bounds, lateness_s, refresh_s

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        kind, result = self._kind, self._result
        label, make_slots_of, bounds, lateness_s = self.label, self._slots_of, self._bounds, self._lateness_s
        sketches = batches | "Sketch" >> beam.ParDo(PartialsDoFn(
            lambda: SketchFolder(label, kind, make_slots_of(), bounds, lateness_s), self._max_slots))
        merged = sketches | "Merge" >> (
            beam.CombinePerKey(_MergeFn(kind)) if batches.is_bounded
            else ConvergingCombine(_MergeFn(kind), SlotWindows(self._bounds), self._lateness_s, self._refresh))
        results = merged | "Result" >> beam.MapTuple(lambda slot, blob: result(slot, kind.deserialize(blob), blob))
        return results if batches.is_bounded else results | "Global" >> beam.WindowInto(window.GlobalWindows())
