"""Exactly-once across crashes: `pipelines.stream` under steady load is killed with SIGKILL (its whole process
tree: the stream, its gateway, Prism) five times, each time at a point chosen by what the test observes
(archive files written, batches handed out but not archived yet, the replay point recorded), and restarted
on the same spool and output, with a 30 s publish margin instead of 60 s so that the replay watermark moves
within the test (what the replay point deletes is tested in tests/test_spool_source.py). At the end every
acknowledged line is in the archive exactly once, by `_id` and by line content; the dead letters are the
backfill's (last row per `_id`); and every result row (last per `_id`) is the backfill's over the same
lines (docs/architecture.md, "Guarantees")."""

from __future__ import annotations

import itertools
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from bench.soak import kill_tree
from connectors.files import latest_rows
from pipelines.backfill import run_backfill
from pipelines.config import load_config
from tests.conftest import PINNED
from tests.test_stream import wait_for
from tests.test_stream_equality import assert_same_results, same
from tests.test_stream_stop import Collector, procs, run  # noqa: F401 (procs is a fixture)

pytestmark = pytest.mark.integration
JOB = """
routes:
  - {name: pv, match: {category: pv}}
counters:
  - {name: hits, route: pv, interval: 5s, by: area}
  - {name: latency, route: pv, interval: 10s, field: ms, by: area}
statistics:
  - {name: ms, route: pv, field: ms, by: area, window: 10s, quantiles: [0.5, 0.9]}
alarms:
  rules:
    - {name: busy, route: pv, group_by: [area], window: {size: 10s, period: 5s}, condition: {threshold: 200}}
  console: {colour: false}
stream: {allowed_lateness: 1m}  # more than a restart takes here, so no retried line is late
"""
RESULT_SINKS = ("counters", "stats", "alarms")
MARGIN = ("--publish_margin", "30")
AREAS = ("us", "fr", "de")
_ids = itertools.count()


def body(n: int) -> list[bytes]:
    """100 live lines of one area, and a malformed one every fifth batch (a dead letter)."""
    now = int(time.time() * 1000)
    area = AREAS[n % len(AREAS)]
    out = [b'%s,%d,{"id":%d,"ms":%d}' % (area.encode(), now, i, i % 97) for i in itertools.islice(_ids, 100)]
    return out + ([b"%s,not a time,{}" % area.encode()] if n % 5 == 0 else [])


def kill_point(round_: int, out: Path, spool: Path) -> tuple[str, Callable[[], object]]:
    """What the test waits to see before it kills, round by round."""
    files, handed_out = archive_files(out), cuts(spool)
    return [
        ("the archive grew by 3 files", lambda: archive_files(out) >= files + 3),
        ("2 batches handed out (their cuts recorded), most not archived yet", lambda: cuts(spool) >= handed_out + 2),
        ("a replay watermark recorded", lambda: (replay_point(spool) or {}).get("watermark_ms")),
        ("4 batches handed out", lambda: cuts(spool) >= handed_out + 4),
        ("the archive grew by 10 files", lambda: archive_files(out) >= files + 10),
    ][round_]


def same_within_rank_error(want: dict, got: dict) -> bool:
    """Equal (`same`), but quantiles (`p50`...) within their KLL sketch's rank error: a sketch of thousands of
    values depends on the order partials merge in, and restarts change that order (the equality test's
    windows are small enough for exact sketches)."""
    quantiles = {k for k in want if re.fullmatch(r"p\d+", k)}
    if not quantiles:
        return same(want, got)
    error = want["rank_error"] * (want["max"] - want["min"]) + 1e-9  # the field's values are spread evenly
    return same({k: v for k, v in want.items() if k not in quantiles},
                {k: v for k, v in got.items() if k not in quantiles}) and all(
        abs(want[k] - got[k]) <= error for k in quantiles)


def archive_files(out: Path) -> int:
    return len(list((out / "events").glob("*/*/*.parquet"))) if (out / "events").exists() else 0


def replay_point(spool: Path) -> dict | None:
    path = spool / "reader" / "replay.json"
    return orjson.loads(path.read_bytes()) if path.exists() else None


def cuts(spool: Path) -> int:
    path = spool / "reader" / "cuts"
    return path.read_bytes().count(b"\n") if path.exists() else 0


def test_kill_9_five_times_under_load_archives_every_line_once_and_gives_the_backfills_results(
        tmp_path: Path, procs: list) -> None:  # noqa: F811
    (tmp_path / "job.yaml").write_text(JOB)
    out, spool = tmp_path / "out", tmp_path / "spool"
    # keys: a retry after the gateway's crash is not written twice; 40 batches/s: about 4,000 lines a second
    collector = Collector(body, keyed=True, per_second=40)
    collector.start()
    try:
        for round_ in range(5):
            proc, log, collector.port = run(tmp_path, procs, f"stream{round_}", *MARGIN)
            what, seen = kill_point(round_, out, spool)
            wait_for(f"round {round_}: {what}", seen, 180, proc, log)
            kill_tree(proc)  # the stream, its gateway and Prism, each in a session of its own
            collector.port = None
        proc, log, collector.port = run(tmp_path, procs, "final", "--idle_stop", "5", *MARGIN)
        acked = len(collector.acked)
        wait_for("lines acknowledged by the last run", lambda: len(collector.acked) > acked + 2000, 120, proc, log)
    finally:
        collector.done.set()
        collector.join(30)
    assert proc.wait(600) == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
    assert "stopped cleanly" in log.read_text() and replay_point(spool) is None  # --idle_stop: a clean end

    acked_lines = collector.acked
    valid = [line for line in acked_lines if b"not a time" not in line]
    table = ds.dataset(out / "events", format="parquet", partitioning="hive").to_table(
        columns=["_id", "area", "ts", "payload"])
    ids = table.column("_id").to_pylist()
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} rows archived twice (same _id)"
    ts = table.column("ts").cast(pa.int64()).to_pylist()
    got = Counter(b"%s,%d,%s" % (a.encode(), t, p.encode()) for a, t, p in zip(
        table.column("area").to_pylist(), ts, table.column("payload").to_pylist(), strict=True))
    want = Counter(valid)
    assert got == want, (f"{sum((got - want).values())} archived lines too many, "
                         f"{sum((want - got).values())} acknowledged lines missing, of {len(valid)}")

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "pv.0.log").write_bytes(b"".join(line + b"\n" for line in acked_lines))
    bounded = tmp_path / "backfill"
    run_backfill([str(logs / "*")], str(bounded), load_config(str(tmp_path / "job.yaml")), PINNED)

    def dead(folder: Path) -> Counter:
        return Counter((r["raw"], r["error"]) for r in latest_rows(str(folder / "deadletter")).values())

    assert dead(out) == dead(bounded) and sum(dead(out).values()) > 0
    assert_same_results(bounded, out, RESULT_SINKS, same_within_rank_error)
