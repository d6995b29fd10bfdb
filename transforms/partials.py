"""Per-bundle pre-aggregation, the one DoFn of every aggregating branch (docs/architecture.md, "Batches,
not elements").

Beam pays per element, so a branch never hands it events: it folds a whole bundle into one partial per slot
(a key and its window or period) and emits only the partials, which Beam then combines per slot. A branch
says how to fold in a `Folder`; `PartialsDoFn` owns the bundle, the memory bound (emit early past
`max_slots`) and the lateness counters; `fold_all` is the same fold without a pipeline, for tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol

import apache_beam as beam
from apache_beam.transforms import window
from apache_beam.utils.windowed_value import WindowedValue

from transforms.event import EventBatch
from transforms.lateness import Late

Parts = dict[Any, Any]


class Folder(Protocol):
    """How a branch pre-aggregates (built on the worker: readers and caches are not pickled)."""

    branches: Sequence[str]
    """The `Late` counters it reports to (`dpipe.late/<branch>`)."""

    def fold(self, batch: EventBatch, parts: Parts, late: dict[str, Late]) -> None:
        """Add a batch's events to `parts`; events of windows closed for the batch go to `late`."""

    def emit(self, parts: Parts) -> Iterable[tuple[Any, Any, float]]:
        """The bundle's partials as (key, value, element time in seconds)."""


def fold_all(folder: Folder, batches: Iterable[EventBatch]) -> Parts:
    """What one bundle of `batches` folds into (the pure function beside the DoFn)."""
    parts: Parts = {}
    late = {name: Late(name) for name in folder.branches}
    for batch in batches:
        folder.fold(batch, parts, late)
    return parts


class PartialsDoFn(beam.DoFn):
    """EventBatch -> the bundle's partials, (key, value) in the global window at the value's time; emitted
    at the end of the bundle, or earlier once `max_slots` are held (memory: slots, never events)."""

    def __init__(self, make_folder: Callable[[], Folder], max_slots: int) -> None:
        self._make_folder, self._max_slots = make_folder, max_slots

    def setup(self) -> None:
        self._folder = self._make_folder()
        self._late = {name: Late(name) for name in self._folder.branches}

    def start_bundle(self) -> None:
        self._parts: Parts = {}

    def process(self, batch: EventBatch) -> Iterator[WindowedValue]:
        self._folder.fold(batch, self._parts, self._late)
        if len(self._parts) >= self._max_slots:
            yield from self._emit()

    def finish_bundle(self) -> Iterator[WindowedValue]:
        for late in self._late.values():
            late.flush()
        yield from self._emit()

    def _emit(self) -> Iterator[WindowedValue]:
        parts, self._parts = self._parts, {}
        for key, value, ts in self._folder.emit(parts):
            yield WindowedValue((key, value), ts, (window.GlobalWindow(),))
