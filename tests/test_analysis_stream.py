"""Statistics and cardinality give the same results unbounded (TestStream, events in time order, running
panes) as bounded, on the demo's events and rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import apache_beam as beam
import orjson
import pyarrow.dataset as ds
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window

from pipelines.backfill import run_backfill
from pipelines.config import load_config
from tests.conftest import PINNED, runner_options
from transforms.cardinality import Cardinality
from transforms.event import Event, EventBatch
from transforms.statistics import Statistics

ROOT = Path(__file__).resolve().parent.parent
DECOR = ("message_fp", "_cntry")


@pytest.fixture(scope="module")
def demo(sample, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, dict[str, list[Event]]]:
    """The job, and each route's decorated events in time order (read back from the backfill's archive)."""
    logs, _ = sample
    out = tmp_path_factory.mktemp("analysis")
    job = load_config(ROOT / "templates" / "jobs" / "engine.als.yaml")
    run_backfill([str(logs / "*")], str(out), job, PINNED)
    rows = ds.dataset(out / "events", format="parquet", partitioning="hive").to_table().to_pylist()
    events = sorted((Event(r["area"], int(r["ts"].timestamp() * 1000), r["category"], orjson.loads(r["payload"]),
                           r["source"], r["offset"], r["payload"].encode(), None,
                           decor={k: r[k] for k in DECOR if r.get(k) is not None})
                     for r in rows), key=lambda e: e.ts)
    routes = {spec.name: [e for e in events if spec.matcher(e)] for spec in job.route_specs()}
    return job, routes


def comparable(result: dict[str, Any]) -> str:
    """A result without its serialized sketch (bytes may differ with the merge order; values may not)."""
    return orjson.dumps({k: v for k, v in result.items() if k != "sketch"}, option=orjson.OPT_SORT_KEYS).decode()


def bounded(transform: beam.PTransform, events: list[Event], scratch: Path) -> list[str]:
    batches = [EventBatch("s", "s", i, events[i:i + 500]) for i in range(0, len(events), 500)]
    with beam.Pipeline(options=runner_options()) as p:
        results = p | beam.Create(batches) | transform | beam.Map(comparable)
        _ = results | beam.io.WriteToText(str(scratch / "bounded"), shard_name_template="")
    return sorted((scratch / "bounded").read_text().splitlines())


def streamed(transform: beam.PTransform, events: list[Event], expected: list[str]) -> None:
    stream = TestStream()
    for i in range(0, len(events), 500):
        chunk = events[i:i + 500]
        stream.add_elements([window.TimestampedValue(EventBatch("s", "s", i, chunk), chunk[0].ts / 1000)])
        stream.advance_watermark_to(chunk[-1].ts / 1000)
    stream.advance_watermark_to_infinity()
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(runner="BundleBasedDirectRunner", options=options) as p:
        assert_that(p | stream | transform | beam.Map(comparable), equal_to(expected))


def test_cardinality_streams_to_the_bounded_results(demo, tmp_path: Path) -> None:
    job, routes = demo
    for conf in job.cardinality:
        expected = bounded(Cardinality(conf.spec()), routes[conf.route], tmp_path)
        assert len(expected) >= 4  # days x periods (x keys)
        streamed(Cardinality(conf.spec()), routes[conf.route], expected)


def test_statistics_stream_to_the_bounded_results(demo, tmp_path: Path) -> None:
    job, routes = demo
    for conf in job.statistics:
        expected = bounded(Statistics(conf.spec()), routes[conf.route], tmp_path)
        assert len(expected) >= 3  # windows (x keys)
        streamed(Statistics(conf.spec()), routes[conf.route], expected)
