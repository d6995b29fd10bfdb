"""A guard around one race in Beam's Python SDK worker (2.77) that fails a streaming job.

When the runner asks the worker to split the bundle of a splittable read (Prism does this for the spool's
`ReadFromUnboundedSource`), `SdfProcessSizedElements.current_element_progress` reports the bytes output so
far as `elements * mean size`. An output's counters are updated in two steps (`OperationCounters.update_collect`:
the element count, then the mean size), so a split request served between them, on the control thread, reads
a count of 1 and the mean of no sample, NaN; `_compute_split` then raises "cannot convert float NaN to
integer" and the job fails (seen under load in the kill -9 test and the stream benchmark).

The guard treats a NaN progress as "progress unknown", which the SDK already handles (it assumes half of the
element is done): it wraps `DataInputOperation._compute_split` (pure Python; the operations themselves are
compiled). It is installed when this module is imported, and `connectors.spool_source` imports it, so it is
in every worker that runs the spool read (LOOPBACK, EXTERNAL pools, Flink's SDK harness).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

from apache_beam.runners.worker.bundle_processor import DataInputOperation

UNKNOWN_PROGRESS = 0.5
"""What the SDK assumes when an element reports no progress (`DataInputOperation.try_split`)."""


def known(progress: float) -> float:
    """The current element's progress, or the SDK's "unknown" when it is not a number."""
    return UNKNOWN_PROGRESS if math.isnan(progress) else progress


def _guarded(compute_split: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(compute_split)
    def _compute_split(index: int, current_element_progress: float, *args: Any, **kwargs: Any) -> Any:
        return compute_split(index, known(current_element_progress), *args, **kwargs)

    _compute_split.dpipe_guarded = True  # type: ignore[attr-defined]
    return _compute_split


def install() -> None:
    """Wrap the SDK's split computation once (idempotent)."""
    if not getattr(DataInputOperation._compute_split, "dpipe_guarded", False):
        DataInputOperation._compute_split = staticmethod(  # type: ignore[method-assign]
            _guarded(DataInputOperation._compute_split))


install()
