"""Statistics per key per event-time window: quantiles and histograms (KLL), or the top N values (frequent
items), with mergeable sketches so that windows, bundles and workers combine (the original's pvstats, done
with bounded memory: sketches, not lists of values).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import datasketches

from transforms.event import Event
from transforms.fields import key_reader, number_text, range_labels, reader, text_of
from transforms.keys import result_id
from transforms.lateness import DEFAULT_ALLOWED_LATENESS_S
from transforms.sketches import Frequent, Kll, SketchPerSlot
from transforms.times import iso_ms


@dataclass(frozen=True)
class StatsSpec:
    name: str
    field: str
    window_s: int
    by: str | None = None
    quantiles: tuple[float, ...] = (0.5, 0.9, 0.99)
    histogram: tuple[float, ...] = ()  # bucket bounds; empty: no histogram
    top: int | None = None  # the N most frequent values instead of quantiles
    lateness_s: float = DEFAULT_ALLOWED_LATENESS_S


def slot_bounds(spec: StatsSpec, slot: tuple) -> tuple[int, int]:
    """A (key, window start) slot's event-time window."""
    return slot[1], slot[1] + spec.window_s * 1000


def slots_of(spec: StatsSpec) -> Callable[[Event], Iterator[tuple[tuple, Any]]]:
    """Per event: its (key, window start ms) slot and the value (a number, or text for top N)."""
    get_value = reader(spec.field)
    get_key = key_reader(spec.by)
    width = spec.window_s * 1000
    top = spec.top is not None

    def slots(event: Event) -> Iterator[tuple[tuple, Any]]:
        value = get_value(event)
        if top:
            value = text_of(value)
            if value is None:
                return
        elif type(value) not in (int, float):
            return
        yield (get_key(event), event.ts - event.ts % width), value

    return slots


def histogram_labels(bounds: tuple[float, ...]) -> list[str]:
    return [f"<{number_text(bounds[0])}", *range_labels(bounds), f">={number_text(bounds[-1])}"]


def result(spec: StatsSpec, slot: tuple, sketch: Any, blob: bytes) -> dict[str, Any]:
    key, start_ms = slot
    doc: dict[str, Any] = {
        "_id": result_id("stats", spec.name, key, start_ms),
        "stat": spec.name, "field": spec.field, "key": key,
        "start": iso_ms(start_ms),
        "_t": start_ms, "window_s": spec.window_s,
    }
    if spec.top is not None:
        items = sorted(sketch.get_frequent_items(datasketches.frequent_items_error_type.NO_FALSE_POSITIVES),
                       key=lambda item: (-item[1], item[0]))  # ties by value: the same top N in any merge order
        doc["count"] = sketch.total_weight
        doc["top"] = [{"value": v, "count": est, "lower": lo, "upper": hi} for v, est, lo, hi in items[: spec.top]]
        return doc
    n = sketch.n
    doc.update({
        "count": n, "min": sketch.get_min_value(), "max": sketch.get_max_value(),
        "rank_error": round(sketch.normalized_rank_error(False), 5),
    })
    for q in spec.quantiles:
        doc[f"p{q * 100:g}"] = sketch.get_quantile(q)
    if spec.histogram:
        masses = sketch.get_pmf(list(spec.histogram))
        doc["histogram"] = {label: round(m * n) for label, m in zip(histogram_labels(spec.histogram), masses,
                                                                   strict=True)}
    return doc


class Statistics(SketchPerSlot):
    """EventBatch (a route's) -> one document per (key, window): quantiles and histogram, or the top N."""

    def __init__(self, spec: StatsSpec) -> None:
        kind = Frequent() if spec.top is not None else Kll()
        super().__init__(f"Statistics[{spec.name}]", kind, functools.partial(slots_of, spec),
                         functools.partial(result, spec), functools.partial(slot_bounds, spec), spec.lateness_s)
