"""The side-output context and the typed summary: what every branch hands back, and summary.json's shape."""

from __future__ import annotations

import apache_beam as beam
import pytest

from connectors.summary import Summary, finish_summary
from pipelines.side_outputs import SideOutputs


def test_a_closed_context_refuses_late_branches(tmp_path) -> None:
    with beam.Pipeline() as pipeline:
        side = SideOutputs()
        side.dead_letters(pipeline | "None" >> beam.Create([]))
        events = pipeline | "Events" >> beam.Create([])
        outputs = side.close(events, str(tmp_path), str(tmp_path / ".tmp"))
        assert outputs.written()[0] is events
        with pytest.raises(RuntimeError, match="closed"):
            side.counts(events)


def test_the_summary_has_a_section_per_stage_and_component() -> None:
    counts = {"lines_read": 3, "events": 2, "dead_letters": 1, "categories": {"pv": 2}, "counters": 5,
              "index": {"indexed": 2}, "files": {"events": 1, "counters": 1}}
    summary = Summary.from_counts(counts)
    assert summary.archive.categories == {"pv": 2} and summary.balanced and summary.complete
    assert summary.components == {"counters": 5, "index": {"indexed": 2}}
    assert finish_summary(summary.to_dict()) == summary.to_dict()  # resume sums summaries again
    assert finish_summary({})["balanced"] is True
