"""Buffered counters: exact statistics per key and event-time interval, the same however events are split."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import orjson
import pyarrow.dataset as ds
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.backfill import run_backfill
from pipelines.config import parse_config
from transforms.counters import EMPTY, CounterSpec, add, counter_document, merge, pre_aggregate
from transforms.decorate import IndexNamer
from transforms.event import Event, EventBatch
from transforms.fields import reader

values = st.lists(st.one_of(st.floats(-1e6, 1e6), st.integers(-10**6, 10**6), st.none(), st.text(max_size=3)),
                  max_size=40)


@settings(max_examples=200, deadline=None)
@given(values, st.integers(0, 40))
def test_merge_of_any_split_equals_one_pass(xs: list[Any], cut: int) -> None:
    whole = EMPTY
    for x in xs:
        whole = add(whole, x)
    left, right = EMPTY, EMPTY
    for x in xs[:cut]:
        left = add(left, x)
    for x in xs[cut:]:
        right = add(right, x)
    merged = merge(left, right)
    numbers = [x for x in xs if type(x) in (int, float)]
    assert merged[0] == whole[0] == len(xs) and merged[1] == len(numbers)
    if numbers:
        assert merged[2] == pytest.approx(math.fsum(numbers), abs=1e-6)
        assert merged[3] == pytest.approx(statistics.fmean(numbers), abs=1e-6)
        assert (merged[5], merged[6]) == (min(numbers), max(numbers))
        if len(numbers) > 1:
            assert math.sqrt(merged[4] / (len(numbers) - 1)) == pytest.approx(statistics.stdev(numbers), rel=1e-6,
                                                                               abs=1e-6)


def ev(ts_s: int, area: str, fields: dict[str, Any], decor: dict[str, Any] | None = None) -> Event:
    return Event(area, ts_s * 1000, "pv", fields, "f", ts_s, b"", b"{}", decor or {})


def test_pre_aggregate_by_key_and_interval_reads_decorations() -> None:
    spec = CounterSpec("revenue", 3600, "_usd", "area")
    t0 = 1389916800  # 2014-01-17 00:00 UTC
    batch = EventBatch("f", "s", 0, [
        ev(t0 + 10, "us", {}, {"_usd": 1.5}), ev(t0 + 3599, "us", {}, {"_usd": 2.5}),
        ev(t0 + 3600, "us", {}, {"_usd": 4.0}), ev(t0 + 20, "fr", {}, {}),
    ])
    parts, late = pre_aggregate(batch, spec, reader("_usd"), reader("area"))
    assert late == 0
    assert sorted(parts) == [("fr", t0 * 1000), ("us", t0 * 1000), ("us", (t0 + 3600) * 1000)]
    doc = counter_document(spec, "us", t0 * 1000, parts[("us", t0 * 1000)], IndexNamer("rs", "@ym"))
    assert {k: doc[k] for k in ("count", "values", "sum", "mean", "min", "max", "start", "_index")} == {
        "count": 2, "values": 2, "sum": 4.0, "mean": 2.0, "min": 1.5, "max": 2.5,
        "start": "2014-01-17T00:00:00Z", "_index": "rs_2014_01",
    }
    assert doc["stddev"] == pytest.approx(statistics.stdev([1.5, 2.5]))  # sample stddev, even for n=2
    fr = counter_document(spec, "fr", t0 * 1000, parts[("fr", t0 * 1000)], IndexNamer("rs", "@ym"))
    assert (fr["count"], fr["values"], fr["mean"]) == (1, 0, None)
    assert doc["_id"] == counter_document(spec, "us", t0 * 1000, EMPTY, IndexNamer("rs", "@ym"))["_id"]


def test_counters_in_a_backfill_equal_a_brute_force_count(sample, tmp_path: Path) -> None:
    logs, manifest = sample
    job = parse_config({
        "routes": [{"name": "pv", "match": {"category": "pv"}}],
        "counters": [{"name": "pv_elapsed", "route": "pv", "interval": "1h", "field": "_log_info.elapsed",
                      "by": "area"}],
    })
    summary = run_backfill([str(logs / "*")], str(tmp_path), job, ["--runner", "FnApiRunner"])
    docs = [orjson.loads(line) for f in (tmp_path / "counters").glob("*.jsonl") for line in f.open("rb")]
    assert summary["counters"] == len(docs)
    rows = ds.dataset(tmp_path / "events", format="parquet", partitioning="hive").to_table(
        filter=ds.field("category") == "pv").to_pylist()
    expected: dict[tuple[str, int], list[float]] = {}
    for row in rows:
        start = int(row["ts"].timestamp()) // 3600 * 3600 * 1000
        expected.setdefault((row["area"], start), []).append(orjson.loads(row["payload"])["_log_info"]["elapsed"])
    assert len(docs) == len(expected)
    for doc in docs:
        elapsed = expected[(doc["key"], doc["_t"])]
        assert doc["count"] == doc["values"] == len(elapsed)
        assert doc["sum"] == pytest.approx(math.fsum(elapsed))
        assert doc["max"] == max(elapsed) and doc["min"] == min(elapsed)
    assert sum(d["count"] for d in docs) == manifest["categories"]["pv"]
    assert len({d["_id"] for d in docs}) == len(docs)


def test_counter_config_names_a_known_route() -> None:
    from pipelines.config import ConfigError

    with pytest.raises(ConfigError, match=r"counters\.x\.route: no route named .nope.; routes: pv"):
        parse_config({"routes": [{"name": "pv"}], "counters": [{"name": "x", "route": "nope"}]}, "job.yaml")


def test_a_stream_and_a_backfill_of_the_same_events_give_the_same_counters() -> None:
    """The unbounded path (TestStream: event-time windows fired by the watermark) equals the bounded one."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.test_stream import TestStream
    from apache_beam.testing.util import assert_that, equal_to

    from transforms.counters import BufferedCounter

    t0 = 1389916800
    spec = CounterSpec("elapsed", 60, "elapsed", "area")
    batches = [
        EventBatch("f", "s", i, [ev(t0 + i * 45 + j, "us" if j % 3 else "fr", {"elapsed": (i * 7 + j) % 11 / 10})
                                 for j in range(30)])
        for i in range(8)
    ]
    namer = IndexNamer("rs", "@ym")
    expected: dict[tuple[str, int], list[float]] = {}
    for b in batches:
        for e in b.events:
            expected.setdefault((e.area, e.ts - e.ts % 60_000), []).append(e.fields["elapsed"])

    def key(doc: dict[str, Any]) -> tuple:
        return doc["key"], doc["_t"], doc["count"], round(doc["sum"], 9), doc["min"], doc["max"]

    want = [(a, t, len(v), round(math.fsum(v), 9), min(v), max(v)) for (a, t), v in expected.items()]
    with TestPipeline(options=PipelineOptions(runner="FnApiRunner")) as p:
        bounded = p | beam.Create(batches) | "Bounded" >> BufferedCounter(spec, namer)
        assert_that(bounded | beam.Map(key), equal_to(want))
    stream = TestStream()
    for b in batches:
        stream = stream.add_elements([b], event_timestamp=b.events[0].ts / 1000).advance_watermark_to(
            b.events[0].ts / 1000)
    stream = stream.advance_watermark_to_infinity()
    options = PipelineOptions(runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    with TestPipeline(options=options) as p:
        events = p | stream
        assert not events.is_bounded  # so the counter takes its windowed, watermark-fired path
        unbounded = events | "Unbounded" >> BufferedCounter(spec, namer)
        assert_that(unbounded | beam.Map(key), equal_to(want))
