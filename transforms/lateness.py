"""Event time for the aggregating branches, one rule for all (docs/architecture.md, "Event time").

Every aggregating branch (counters, statistics, cardinality, funnels) puts each partial result into the event-
time window its key names (`SlotWindows`), and lets Beam keep the window open for `allowed_lateness` past its
end: the on-time pane fires when the watermark passes the end, and each later partial fires a corrected pane.
Each pane is the whole result so far (`ConvergingCombine`) and keeps the result's `_id`, so a JSON Lines
reader (last row wins) and the search cluster (upsert) converge on the backfill's value whatever the order
and delay of delivery within the lateness.

What is later than that is counted per branch (`Late`: the metric `dpipe.late/<branch>` and a log line) and
left out of that branch's results, never silently; it is still archived. Lateness is measured against the
watermark the source read the line under (`EventBatch.watermark_ms`). The runner's own lateness is wider
(`runner_lateness`): the watermark a partial meets downstream may have moved on since its line was read, and
a partial dpipe kept must not be dropped by the runner.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.coders import coders
from apache_beam.metrics import Metrics
from apache_beam.transforms import trigger, userstate, window
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


def converging(window_fn: window.WindowFn, allowed_s: float, early_s: float | None = None,
               accumulation: Any = trigger.AccumulationMode.ACCUMULATING) -> beam.WindowInto:
    """Windows that fire at the watermark (and every `early_s` of processing time before it, for running
    results), then once per late partial; accumulating by default: every pane is the whole result so far.
    Every trigger here has a late firing: Prism 2.77 can crash on an early processing-time trigger without one
    (tests/test_prism.py)."""
    return beam.WindowInto(
        window_fn,
        trigger=trigger.AfterWatermark(early=trigger.AfterProcessingTime(int(early_s)) if early_s else None,
                                       late=trigger.AfterCount(1)),
        accumulation_mode=accumulation,
        allowed_lateness=Duration(seconds=runner_lateness(allowed_s)),
    )


class _Accumulators(beam.CombineFn):
    """A CombineFn whose output is its accumulator, so that a pane's delta can be merged into a running one."""

    def __init__(self, fn: beam.CombineFn) -> None:
        self._fn = fn

    def create_accumulator(self) -> Any:
        return self._fn.create_accumulator()

    def add_input(self, acc: Any, item: Any) -> Any:
        return self._fn.add_input(acc, item)

    def merge_accumulators(self, accs: Any) -> Any:
        return self._fn.merge_accumulators(accs)

    def extract_output(self, acc: Any) -> Any:
        return acc

    def get_accumulator_coder(self) -> coders.Coder:
        return self._fn.get_accumulator_coder()


_RUNNING = beam.DoFn.StateParam(userstate.ReadModifyWriteStateSpec("running", coders.PickleCoder()))


def running_merge(fn: beam.CombineFn, running: Any, delta: Any) -> Any:
    """The accumulator so far after one more pane's delta (None: the first pane)."""
    return delta if running is None else fn.merge_accumulators([running, delta])


class _Outlive(window.NonMergingWindowFn):
    """An interval window `extra_s` longer than the element's own. Prism (2.77) drops a stateful DoFn's state
    when the watermark passes its window's end, whatever the allowed lateness: the running state of a window
    must live as long as the runner may still fire a late pane for it."""

    def __init__(self, extra_s: float) -> None:
        self._extra = Duration(seconds=extra_s)

    def assign(self, context: window.WindowFn.AssignContext) -> list[window.IntervalWindow]:
        own = context.window
        return [window.IntervalWindow(own.start, own.end + self._extra)]  # type: ignore[union-attr]

    def get_window_coder(self) -> coders.Coder:
        return coders.IntervalWindowCoder()


class _RunningDoFn(beam.DoFn):
    """Per key and window (keyed state, expired with the window): the accumulator of every pane so far."""

    def __init__(self, fn: beam.CombineFn) -> None:
        self._fn = fn

    def process(self, element: tuple[Any, Any], running=_RUNNING) -> Iterator[tuple[Any, Any]]:
        key, delta = element
        acc = running_merge(self._fn, running.read(), delta)
        running.write(acc)
        yield key, self._fn.extract_output(acc)


class ConvergingCombine(beam.PTransform):
    """(key, partial) -> (key, result so far) per pane of the key's event-time window (`converging`'s triggers).

    The panes the runner fires are *discarding* (each holds the partials since the last one), and a keyed state
    per window merges them into the result so far. Accumulating panes give the same results, but the runner
    then keeps every partial of a window and hands all of them to the combine at every pane: with a partial
    per bundle and a pane every few seconds, the work per pane grows with the window's age (a month of
    cardinality, the global window of issues). The price is a state read and write per key and pane, a
    blocking round trip to the runner: for few keys with long windows (docs/architecture.md, "Event time").
    """

    def __init__(self, fn: beam.CombineFn, window_fn: window.WindowFn, allowed_s: float,
                 early_s: float | None = None) -> None:
        super().__init__()
        self._fn, self._window_fn, self._allowed_s, self._early_s = fn, window_fn, allowed_s, early_s

    def expand(self, partials: beam.PCollection) -> beam.PCollection:
        deltas = (
            partials
            | "Windows" >> converging(self._window_fn, self._allowed_s, self._early_s,
                                      trigger.AccumulationMode.DISCARDING)
            | "Deltas" >> beam.CombinePerKey(_Accumulators(self._fn))
        )
        if not isinstance(self._window_fn, window.GlobalWindows):
            deltas = deltas | "StateWindows" >> beam.WindowInto(_Outlive(runner_lateness(self._allowed_s)))
        return deltas | "Running" >> beam.ParDo(_RunningDoFn(self._fn))
