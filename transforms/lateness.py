"""Event time for the aggregating branches, one rule for all (docs/architecture.md, "Event time").

Every aggregating branch (counters, statistics, cardinality, funnels) puts each partial result into the event-
time window its key names (`SlotWindows`), and lets Beam keep the window open for `allowed_lateness` past its
end: the on-time pane fires when the watermark passes the end, and each later partial fires a corrected pane.
Panes accumulate and keep the result's `_id`, so a JSON Lines reader (last row wins) and the search cluster
(upsert) converge on the backfill's value whatever the order and delay of delivery within the lateness.

What is later than that is counted per branch (`Late`: the metric `dpipe.late/<branch>` and a log line) and
left out of that branch's results, never silently; it is still archived. Lateness is measured against the
watermark the source read the line under (`EventBatch.watermark_ms`). The runner's own lateness is wider
(`runner_lateness`): the watermark a partial meets downstream may have moved on since its line was read, and
a partial dpipe kept must not be dropped by the runner.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import apache_beam as beam
from apache_beam.coders import coders
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, window
from apache_beam.utils.timestamp import Duration

log = logging.getLogger("dpipe.late")

DEFAULT_ALLOWED_LATENESS_S = 3600
"""One hour: a collector that was down for an hour and catches up still counts, and a window's state lives
an hour past its end (memory: keys x windows open in that hour)."""
RUNNER_MARGIN_S = 600
DEFAULT_REFRESH_S = 10
"""Running results (statistics, cardinality, funnels) are re-emitted this often while a window is open."""


def runner_lateness(allowed_s: float) -> int:
    """The runner keeps windows open this long past their end (see the module docstring)."""
    return int(allowed_s + max(allowed_s, RUNNER_MARGIN_S))


def cutoff(watermark_ms: int | None, allowed_ms: int) -> int | None:
    """Windows ending at or before this are closed for a batch read under `watermark_ms` (None: none are)."""
    return None if watermark_ms is None else watermark_ms - allowed_ms


class Late:
    """Counts what a branch leaves out for being later than its lateness: a metric, and one log line per
    bundle that had any."""

    def __init__(self, branch: str) -> None:
        self.branch = branch
        self._counter = Metrics.counter("dpipe.late", branch)
        self._pending = 0

    def add(self, lines: int) -> None:
        self._pending += lines

    def flush(self) -> None:
        if self._pending:
            self._counter.inc(self._pending)
            log.warning("%s: %d lines later than the allowed lateness left out (still archived)", self.branch,
                        self._pending)
            self._pending = 0


class SlotWindows(window.NonMergingWindowFn):
    """Windows named by the element's key: `bounds(key)` -> [start, end) in ms. A key that holds its interval
    or calendar period (a counter's, a day of uniques) thus gets exactly that event-time window."""

    def __init__(self, bounds: Callable[[Any], tuple[int, int]]) -> None:
        self._bounds = bounds

    def assign(self, context: window.WindowFn.AssignContext) -> list[window.IntervalWindow]:
        start, end = self._bounds(context.element[0])  # type: ignore[index]  # elements are (key, value)
        return [window.IntervalWindow(start / 1000, end / 1000)]

    def get_window_coder(self) -> coders.Coder:
        return coders.IntervalWindowCoder()


def converging(window_fn: window.WindowFn, allowed_s: float, early_s: float | None = None) -> beam.WindowInto:
    """Windows that fire at the watermark (and every `early_s` of processing time before it, for running
    results), then once per late partial, accumulating: every pane is the whole result so far. Every trigger
    here has a late firing: Prism 2.77 can crash on an early processing-time trigger without one
    (tests/test_prism.py)."""
    return beam.WindowInto(
        window_fn,
        trigger=trigger.AfterWatermark(early=trigger.AfterProcessingTime(int(early_s)) if early_s else None,
                                       late=trigger.AfterCount(1)),
        accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
        allowed_lateness=Duration(seconds=runner_lateness(allowed_s)),
    )
