"""ParseAls as a composite PTransform: main and dead-letter outputs under a pinned runner."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from tests.conftest import runner_options
from transforms import als
from transforms.als import ParseAls, parse_batch
from transforms.event import LineBatch

LINES = [
    b'us,1389913256544,{"uid":1}',
    b"",
    b"fr,1389913256,{}\r",
    b"us,45,{}",
    b'de,1389913256544,{"a":',
]


def batch(category: str | None = "dau", error: str | None = None) -> LineBatch:
    return LineBatch("logs/dau.0.log", "shard-a", 0, category, [0, 28, 29, 47, 56], list(LINES), error)


def test_parse_batch_accounts_for_every_line() -> None:
    events, dead = parse_batch(batch())
    assert [(e.area, e.ts, e.offset) for e in events.events] == [("us", 1389913256544, 0), ("fr", 1389913256000, 29)]
    assert [(d.error, d.offset) for d in dead] == [(als.EMPTY_LINE, 28), (als.TS_INVALID, 47), (als.NOT_JSON, 56)]


def test_unknown_category_sends_the_whole_batch_to_dead_letters() -> None:
    events, dead = parse_batch(batch(None, "cannot tell the category from file name 'README'"))
    assert events.events == []
    assert len(dead) == len(LINES)
    assert {d.error for d in dead} == {als.UNKNOWN_CATEGORY}
    assert dead[0].detail.startswith("cannot tell")


def test_parse_als_outputs() -> None:
    with TestPipeline(options=runner_options()) as p:
        result = p | beam.Create([batch()]) | ParseAls()
        events = result.events | "Events" >> beam.FlatMap(lambda b: [(e.area, e.ts, e.fields) for e in b.events])
        dead = result.deadletter | "Dead" >> beam.Map(lambda d: (d.error, d.raw, d.source, d.offset))
        assert_that(events, equal_to([("us", 1389913256544, {"uid": 1}), ("fr", 1389913256000, {})]), label="ev")
        assert_that(
            dead,
            equal_to([
                (als.EMPTY_LINE, "", "logs/dau.0.log", 28),
                (als.TS_INVALID, "us,45,{}", "logs/dau.0.log", 47),
                (als.NOT_JSON, 'de,1389913256544,{"a":', "logs/dau.0.log", 56),
            ]),
            label="dead",
        )


def test_parse_als_applies_time_bounds() -> None:
    bounds = als.TimeBounds(min_ms=1389913256001, max_ms=None)
    with TestPipeline(options=runner_options()) as p:
        result = p | beam.Create([batch()]) | ParseAls(bounds)
        reasons = result.deadletter | beam.Map(lambda d: d.error)
        assert_that(reasons, equal_to([als.EMPTY_LINE, als.TOO_OLD, als.TS_INVALID, als.NOT_JSON]))
