"""One definition, one answer, end to end: the generated archive POSTed to `pipelines.stream` the way a fleet
delivers it gives the backfill's results for every branch, by `_id`, and the same events and dead letters.

Delivery: six collectors share every category's lines (a server each); each flushes every 1 to 60 s of event
time, one runs ten minutes behind the others, one is down for two minutes and then sends what it held;
categories interleave, and eight POSTs run at a time. Event time is replayed faster than the wall clock (three
days in about a minute), so the job's idle timeout is raised to keep slow categories holding the watermark
as they would at the real pace (runbooks/streaming.md).
"""

from __future__ import annotations

import gzip
import math
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pyarrow.dataset as ds
import pytest
import yaml

from connectors.files import latest_rows
from connectors.spool_source import event_ms
from pipelines.backfill import run_backfill
from pipelines.config import load_config
from tests.conftest import PINNED
from tests.test_stream import gateway_port, post, start, wait_for
from transforms.category import category_from_path

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "templates" / "jobs" / "engine.als.yaml"
RESULT_SINKS = ("counters", "cardinality", "stats", "funnels", "alarms")
COLLECTORS = [  # (flush interval s, delay s, outage [start, end) s from the first line, or None)
    (1, 0, None), (5, 0, None), (15, 0, None), (30, 0, (7200, 7320)), (60, 0, None), (10, 600, None)]


def lines_of(path: Path) -> list[bytes]:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return [line for line in data.split(b"\n") if line]  # the gateway treats blank lines as separators


def deliveries(logs: Path) -> list[tuple[float, str, list[bytes]]]:
    """(send time in event seconds, category, lines) per POST, in the order a fleet would send them."""
    by_category: dict[str, list[bytes]] = {}
    for path in sorted(logs.iterdir()):  # a category's days: history .gz files, then the live .log
        by_category.setdefault(category_from_path(str(path)), []).extend(lines_of(path))
    first = min(ms for lines in by_category.values() for line in lines if (ms := event_ms(line)) is not None)
    posts: dict[tuple[int, int, str], list[bytes]] = {}
    for category, lines in by_category.items():
        last_ms = first
        for i, line in enumerate(lines):
            ms = event_ms(line)
            last_ms = ms if ms is not None else last_ms  # a malformed line goes with its neighbours
            c = i % len(COLLECTORS)
            every, delay, outage = COLLECTORS[c]
            t = (last_ms - first) / 1000
            flush = (math.floor(t / every) + 1) * every + delay
            if outage and outage[0] <= flush < outage[1]:
                flush = outage[1]  # held while the collector is down, sent when it comes back
            posts.setdefault((flush, c, category), []).append(line)
    return sorted((flush, category, body) for (flush, _, category), body in posts.items())


def comparable(sink: str, row: dict[str, Any]) -> dict[str, Any]:
    """What must agree: sketches' bytes and alarm samples depend on merge and arrival order, their values not."""
    return {k: v for k, v in row.items() if k not in {"sketch", "samples", "revision"}}


def same(a: Any, b: Any) -> bool:
    """Equal, floats to 1e-9 relative (a mean or a sum depends on the order of additions)."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(same, a, b))
    return a == b


def results(out: Path, sink: str) -> dict[str, dict]:
    return {i: comparable(sink, r) for i, r in latest_rows(str(out / sink)).items()} if (out / sink).exists() else {}


def assert_same_results(bounded: Path, out: Path, sinks: tuple[str, ...],
                        equal: Callable[[Any, Any], bool] = same) -> None:
    """Every result row of the backfill (last per `_id`) is the stream's (`equal`), and the stream has no other."""
    for sink in sinks:
        want, got = results(bounded, sink), results(out, sink)
        assert want, sink
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        differ = [i for i in want if i in got and not equal(want[i], got[i])]
        assert not (missing or extra or differ), (
            f"{sink}: {len(missing)} missing, {len(extra)} extra, {len(differ)} differ of {len(want)}; e.g. "
            f"{[(want[i], got[i]) for i in differ[:2]] or [want.get(i) or got.get(i) for i in (missing + extra)[:2]]}")


def events(out: Path) -> list[tuple]:
    table = ds.dataset(out / "events", format="parquet", partitioning="hive").to_table(
        columns=["category", "area", "ts", "payload"])
    return sorted((r["category"], r["area"], r["ts"], r["payload"]) for r in table.to_pylist())


def dead_letters(out: Path) -> list[tuple[str, str]]:
    rows = [orjson.loads(line) for f in (out / "deadletter").glob("*.jsonl") for line in f.read_bytes().splitlines()]
    return sorted((r["raw"], r["error"]) for r in rows if r["error"] != "empty line")


def behaviour(out: Path) -> list[tuple]:
    table = ds.dataset(out / "behaviour", format="parquet", partitioning="hive").to_table()
    return sorted(tuple(sorted((k, str(v)) for k, v in r.items())) for r in table.to_pylist())


@pytest.fixture(scope="module")
def backfilled(sample, tmp_path_factory: pytest.TempPathFactory) -> Path:
    logs, _ = sample
    bounded = tmp_path_factory.mktemp("backfill")
    run_backfill([str(logs / "*")], str(bounded), load_config(TEMPLATE), PINNED)
    return bounded


def post_plan(port: int, logs: Path) -> None:
    plan = deliveries(logs)
    assert len({c for _, c, _ in plan}) >= 6 and len(plan) > 1000
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda p: post(port, p[1], p[2]), plan))
    assert set(statuses) == {200}


@pytest.mark.parametrize("mode", ["live", "backlog"])
def test_a_fleets_delivery_gives_the_backfills_results(sample, backfilled: Path, tmp_path: Path, mode: str) -> None:
    """live: POSTed while the stream runs; backlog: all in the spool before the stream starts (a stream
    started on hours of spool), read furthest behind first."""
    logs, _ = sample
    bounded = backfilled
    job = yaml.safe_load(TEMPLATE.read_text())
    job["stream"] = {**job.get("stream", {}), "idle_timeout": "1h"}  # see the module docstring
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    out, log, spool = tmp_path / "stream", tmp_path / "stream.log", tmp_path / "spool"
    if mode == "backlog":
        gw_log = tmp_path / "gateway.log"
        gateway = start(["pipelines.gateway", "--spool", str(spool), "--port", "0"], gw_log)
        try:
            post_plan(wait_for("gateway", lambda: gateway_port(gw_log), 30, gateway, gw_log), logs)
        finally:
            gateway.terminate()
            assert gateway.wait(60) == 0
    where = ["--no_gateway"] if mode == "backlog" else ["--port", "0"]
    stream = start(["pipelines.stream", "--output", str(out), "--spool", str(spool), *where,
                    "--config", str(tmp_path / "job.yaml"), "--idle_stop", "5"], log)
    try:
        if mode == "live":
            post_plan(wait_for("stream", lambda: (m := re.search(rb"gateway on http://127.0.0.1:(\d+)",
                                                                log.read_bytes())) and int(m.group(1)),
                               60, stream, log), logs)
        assert stream.wait(600) == 0, log.read_text()[-3000:]
    finally:
        if stream.poll() is None:
            stream.kill()
            stream.wait()

    assert events(out) == events(bounded)
    assert dead_letters(out) == dead_letters(bounded)
    assert behaviour(out) == behaviour(bounded)
    assert_same_results(bounded, out, RESULT_SINKS)
    assert "later than the allowed lateness" not in log.read_text(), "within the lateness nothing is left out"
