"""Statistics per key and window: KLL quantiles within their stated rank error, histograms, exact top N."""

from __future__ import annotations

import bisect
from collections import Counter
from datetime import datetime
from pathlib import Path

import orjson
import pyarrow.dataset as ds
import pytest
import yaml

from pipelines.backfill import run_backfill
from pipelines.config import parse_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def stats(sample, tmp_path_factory: pytest.TempPathFactory):
    logs, manifest = sample
    out = tmp_path_factory.mktemp("stats")
    base = yaml.safe_load((ROOT / "templates" / "jobs" / "engine.als.yaml").read_text())
    job = parse_config({
        "decorate": base["decorate"],
        "routes": [{"name": "pv", "match": {"category": "pv"}}, {"name": "errors", "match": {"category": "error"}}],
        "statistics": [
            {"name": "elapsed", "route": "pv", "field": "_log_info.elapsed", "by": "area", "window": "6h",
             "histogram": [0.01, 0.02, 0.05]},
            {"name": "top_errors", "route": "errors", "field": "message_fp", "window": "1h", "top": 3},
        ],
    })
    run_backfill([str(logs / "*")], str(out), job, ["--runner", "FnApiRunner"])
    docs = [orjson.loads(line) for f in (out / "stats").glob("*.jsonl") for line in f.open("rb")]
    rows = ds.dataset(out / "events", format="parquet", partitioning="hive").to_table().to_pylist()
    return manifest, docs, rows


def test_quantiles_are_within_the_sketchs_rank_error(stats) -> None:
    _, docs, rows = stats
    exact: dict[tuple[str, int], list[float]] = {}
    for row in rows:
        if row["category"] == "pv":
            start = int(row["ts"].timestamp()) // 21600 * 21600 * 1000
            exact.setdefault((row["area"], start), []).append(orjson.loads(row["payload"])["_log_info"]["elapsed"])
    elapsed = [d for d in docs if d["stat"] == "elapsed"]
    assert {(d["key"], d["_t"]) for d in elapsed} == set(exact)
    for doc in elapsed:
        values = sorted(exact[(doc["key"], doc["_t"])])
        n = len(values)
        assert doc["count"] == n and doc["min"] == values[0] and doc["max"] == values[-1]
        for q in (0.5, 0.9, 0.99):
            v = doc[f"p{q * 100:g}"]  # its exact ranks span its ties: [first, last] position
            low, high = bisect.bisect_left(values, v) / n, bisect.bisect_right(values, v) / n
            assert low - doc["rank_error"] - 1 / n <= q <= high + doc["rank_error"] + 1 / n
        counts = doc["histogram"]
        assert sum(counts.values()) == pytest.approx(n, abs=len(counts))
        below = sum(1 for v in values if v < 0.01)
        assert abs(counts["<0.01"] - below) <= doc["rank_error"] * n + 1


def test_top_n_is_exact_for_few_distinct_values_and_finds_the_incident(stats) -> None:
    manifest, docs, rows = stats
    exact: dict[int, Counter] = {}
    for row in rows:
        if row["category"] == "error":
            start = int(row["ts"].timestamp()) // 3600 * 3600 * 1000
            exact.setdefault(start, Counter())[row["message_fp"]] += 1
    tops = {d["_t"]: d for d in docs if d["stat"] == "top_errors"}
    assert set(tops) == set(exact)
    for start, doc in tops.items():
        assert doc["count"] == sum(exact[start].values())
        # exact counts; among values of equal count the order is the sketch's
        assert [t["count"] for t in doc["top"]] == [c for _, c in exact[start].most_common(3)]
        assert all(exact[start][t["value"]] == t["count"] == t["lower"] == t["upper"] for t in doc["top"])
    incident = manifest["incident"]
    hour = int(datetime.fromisoformat(incident["start"]).timestamp()) // 3600 * 3600000
    assert tops[hour]["top"][0]["count"] >= incident["lines"]
