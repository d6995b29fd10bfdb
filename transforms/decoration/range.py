"""`range`: `<key>_rg` = the label `lo-hi` of the half-open bucket `[lo, hi)` holding the value."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Annotated

import pyarrow as pa
from pydantic import Field

from pipelines.validation import increasing
from transforms.decoration.base import Op, OpError, OpSection, decorations
from transforms.event import MISSING, Event
from transforms.fields import Keys, compile_getter, flat_name, is_number, range_labels


class RangeOp(Op):
    name = "range"

    def __init__(self, keys: Sequence[str], bounds: Sequence[float]) -> None:
        self.keys = [(k, compile_getter(k), flat_name(k) + "_rg") for k in keys]
        self.bounds = list(bounds)
        self.labels = range_labels(self.bounds)

    def label(self, value: float) -> str | None:
        i = bisect.bisect_right(self.bounds, value)
        return self.labels[i - 1] if 0 < i < len(self.bounds) else None

    def apply(self, event: Event, counts: dict[str, int]) -> None:
        for key, get, out in self.keys:
            value = get(event.fields)
            if value is MISSING or value is None:
                continue
            if not is_number(value):
                raise OpError(f"range: {key} is not a number", f"got {type(value).__name__}: {value!r:.80}")
            label = self.label(value)
            if label is not None:
                decorations(event)[out] = label

    def columns(self) -> list[tuple[str, pa.DataType]]:
        return [(out, pa.string()) for _, _, out in self.keys]


class RangeConfig(OpSection):
    keys: Keys
    bounds: Annotated[list[float], Field(min_length=2), increasing("bounds")]

    def build(self) -> Op:
        return RangeOp(self.keys, self.bounds)
