"""Running results for unbounded inputs: analyses whose key already holds its window or period (sketches per
slot, funnels per period) need no event-time windows, only panes that fire while the stream goes on."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.transforms import trigger, window

DEFAULT_REFRESH_S = 10


def running(refresh_s: float = DEFAULT_REFRESH_S) -> beam.WindowInto:
    """Global window, a pane every `refresh_s` of processing time while input arrives, accumulating: each pane
    holds the whole result so far (same `_id`, so a sink keeps the last). `late` makes Prism keep the trigger
    state of the final pane (without it Prism 2.77 can crash on a processing-time firing, tests/test_prism.py)."""
    return beam.WindowInto(
        window.GlobalWindows(),
        trigger=trigger.AfterWatermark(early=trigger.AfterProcessingTime(int(refresh_s)),  # whole seconds
                                       late=trigger.AfterCount(1)),
        accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
    )
