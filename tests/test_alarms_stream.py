"""Alarms over an unbounded input, under TestStream: early, on-time and late firings, the lateness bound,
threshold edges, cooldown and abnormal change in a stream, and the same alarms as the bounded run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pipelines.backfill import run_backfill
from pipelines.config import load_config
from tests.conftest import PINNED
from tests.test_lateness import Step, events_batch, run
from transforms.alarms import Alarms, RuleSpec
from transforms.event import Event

ROOT = Path(__file__).resolve().parent.parent
S = 1000
T0 = 1_389_916_800  # 2014-01-17 00:00 UTC, seconds


def event(second: float, area: str = "fr", t: float = 0.0, n: int = 0) -> Event:
    raw = f'{area},{int((T0 + second) * S)},{{"t":{t},"n":{n}}}'.encode()
    return Event(area, int((T0 + second) * S), "error", {"t": t, "n": n}, "s", n, raw, None)


def run_stream(rules: list[RuleSpec], steps: list[Step], check: Callable[[list[dict]], None]) -> None:
    run(Alarms("Alarms", rules), steps, events_batch,
        lambda got: check(sorted(got, key=lambda a: (a["rule"], a["window"]["start"]))), tick_s=2)


def fires(*expected: tuple[str, str, float], revised: tuple[tuple[str, str, float], ...] = ()
          ) -> Callable[[list[dict]], None]:
    """Expect exactly these (rule, window start hh:mm:ss, value) alarms as first firings (revision 0: what
    is notified), and these corrections (a later revision: a closed window's final value)."""
    def check(got: list[dict]) -> None:
        first = [a for a in got if a["revision"] == 0]
        assert [(a["rule"], a["window"]["start"][11:19], a["value"]) for a in first] == list(expected)
        later = [a for a in got if a["revision"] > 0]
        assert [(a["rule"], a["window"]["start"][11:19], a["value"]) for a in later] == list(revised)
    return check


COUNT = RuleSpec("count3", 60, 60, threshold=3, group_by=("area",), lateness_s=30)
MEAN = RuleSpec("mean_high", 60, 60, aggregate="mean", field="t", threshold=10, group_by=("area",), lateness_s=30)


def test_a_growing_count_fires_early_at_the_crossing_not_at_the_windows_end() -> None:
    # 3 events cross the threshold while the watermark is at 0:00:20; 2 more come after: still one alarm, with
    # the value at the crossing (5 would mean it waited for the end of the window), corrected to 5 (the
    # backfill's value, under the same _id) once the window has closed
    run_stream([COUNT], [
        ("events", [event(1), event(2), event(3)]), ("watermark", 20),
        ("events", [event(30), event(40)]), ("watermark", 200),
    ], fires(("count3", "00:00:00", 3), revised=(("count3", "00:00:00", 5),)))


def test_threshold_edges_in_a_stream() -> None:
    above = RuleSpec("above3", 60, 60, op=">", threshold=3)
    run_stream([COUNT, above], [("events", [event(1), event(2), event(3)]), ("watermark", 200)],
               fires(("count3", "00:00:00", 3)))


def test_a_mean_fires_on_time_when_the_watermark_passes_the_end() -> None:
    # the mean is 12 after two events, then 8 after the third: a mean can fall, so only the end decides
    run_stream([MEAN], [
        ("events", [event(1, t=12), event(2, t=12)]), ("watermark", 30),
        ("events", [event(50, t=0)]), ("watermark", 61),
        ("events", [event(61, t=20), event(62, t=20)]), ("watermark", 200),
    ], fires(("mean_high", "00:01:00", 20)))


def test_late_partials_within_the_allowed_lateness_fire_late_and_beyond_it_are_dropped() -> None:
    run_stream([COUNT], [
        ("events", [event(1), event(2)]), ("watermark", 70),  # window 0:00 closed with 2: no alarm
        ("events", [event(10)]), ("watermark", 80),  # 20 s late, within 30 s: fires late with 3
        ("events", [event(61), event(62)]), ("watermark", 200),  # window 0:01 closed with 2
        ("events", [event(70), event(71)]),  # 80 s late for 0:01: dropped, no alarm
    ], fires(("count3", "00:00:00", 3)))


def test_cooldown_and_abnormal_change_in_a_stream() -> None:
    cooled = RuleSpec("cooled", 60, 60, threshold=2, cooldown_s=120)
    surge = RuleSpec("surge", 60, 60, change_percent=100, min_base=2)
    steps: list[Step] = []
    for minute, n in enumerate([2, 2, 2, 5, 2]):  # cooled: 0:00 fires, 0:01 cools down, 0:02 is 120 s later
        steps += [("events", [event(minute * 60 + i) for i in range(n)]), ("watermark", minute * 60 + 59)]
    run_stream([cooled, surge], steps, fires(
        ("cooled", "00:00:00", 2), ("cooled", "00:02:00", 2), ("cooled", "00:04:00", 2), ("surge", "00:03:00", 5)))


@pytest.mark.integration
def test_the_demo_rules_raise_the_same_alarms_streaming_as_in_the_backfill(sample, tmp_path: Path) -> None:
    """Events of the generated archive, in time order through a stream, against the backfill's alarms."""
    import orjson
    import pyarrow.dataset as ds

    logs, _ = sample
    job = load_config(ROOT / "templates" / "jobs" / "engine.als.yaml")
    run_backfill([str(logs / "*")], str(tmp_path), job, PINNED)
    bounded = sorted((a["rule"], a["window"]["start"], orjson.dumps(a["key"]))
                     for f in (tmp_path / "alarms").glob("*.jsonl") for a in map(orjson.loads, f.open("rb")))
    assert bounded
    rules = [r.spec() for r in job.alarms.rules]
    table = ds.dataset(tmp_path / "events", format="parquet", partitioning="hive").to_table(
        filter=ds.field("category").isin(["error", "mongoErr"]))
    def as_event(r: dict[str, Any]) -> Event:
        decor = {"message_fp": r["message_fp"]} if r.get("message_fp") else None
        return Event(r["area"], int(r["ts"].timestamp() * 1000), r["category"], orjson.loads(r["payload"]),
                     r["source"], r["offset"], r["payload"].encode(), None, decor=decor)

    events = sorted(map(as_event, table.to_pylist()), key=lambda e: e.ts)
    steps: list[Step] = []
    for i in range(0, len(events), 200):
        chunk = events[i:i + 200]
        steps += [("events", chunk), ("watermark", chunk[-1].ts / S - T0)]

    def same(got: list[dict]) -> None:
        assert sorted((a["rule"], a["window"]["start"], orjson.dumps(a["key"])) for a in got
                      if a["revision"] == 0) == bounded

    run_stream(rules, steps, same)
