"""The guard against the SDK worker's NaN split progress (connectors/beam_fixes.py), on Beam's own classes."""

from __future__ import annotations

import math

import pytest
from apache_beam.io.iobase import RestrictionProgress
from apache_beam.runners.worker import operations
from apache_beam.runners.worker.bundle_processor import DataInputOperation
from apache_beam.utils.counters import CounterFactory

from connectors import beam_fixes


def progress_between_the_two_counter_updates() -> float:
    """The progress `SdfProcessSizedElements.current_element_progress` computes (the tracker's progress with
    the bytes output since the element started as completed work) when its output has counted its first
    element but not yet its size: the moment `OperationCounters.update_collect` is in when the control thread
    serves a split request. Beam's own counters; the operation is compiled and cannot be built bare."""
    receivers = operations._TaggedReceivers(CounterFactory(), "Tail")
    receivers["out"].opcounter.element_counter.update(1)
    tracker = RestrictionProgress(completed=0.0, remaining=1.0)  # an unbounded read's tracker
    return tracker.with_completed(receivers.total_output_bytes() - 0).fraction_completed


def test_a_split_during_the_first_counter_update_is_computed_with_unknown_progress() -> None:
    fraction = progress_between_the_two_counter_updates()
    assert math.isnan(fraction)  # the SDK's race, still there
    unguarded = DataInputOperation._compute_split.__wrapped__  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="NaN"):  # what failed the job
        unguarded(0, fraction, 10, 0.5, 10)
    assert DataInputOperation._compute_split(0, fraction, 10, 0.5, 10) == unguarded(0, 0.5, 10, 0.5, 10)


def test_known_progress_passes_and_install_is_idempotent() -> None:
    assert beam_fixes.known(0.25) == 0.25 and beam_fixes.known(math.nan) == beam_fixes.UNKNOWN_PROGRESS
    method = DataInputOperation._compute_split
    beam_fixes.install()
    assert DataInputOperation._compute_split is method
