"""HyperLogLog cardinality: accuracy, hashing, calendar periods, and MAU as the union of daily sketches."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow.dataset as ds
import pytest

from pipelines.backfill import run_backfill
from pipelines.cardinality import query
from pipelines.config import parse_config
from transforms.cardinality import CardinalitySpec, slots_of
from transforms.event import Event
from transforms.sketches import Hll
from transforms.times import LocalDays, period_start

ROOT = Path(__file__).resolve().parent.parent


def ev(ts_ms: int, uid: Any, area: str = "us") -> Event:
    return Event(area, ts_ms, "dau", {"uid": uid}, "f", 0, b"", b"{}", {})


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def fold(spec: CardinalitySpec, events: Any, sketches: dict) -> dict:
    """What a bundle does: one sketch per slot."""
    kind, slots = Hll(spec.lg_k), slots_of(spec)
    for event in events:
        for slot, value in slots(event):
            if slot not in sketches:
                sketches[slot] = kind.new()
            kind.update(sketches[slot], value)
    return sketches


def estimate_of(sketches: dict, slot: tuple) -> float:
    return sketches[slot].get_estimate()


def test_one_million_distinct_ids_within_two_percent_at_the_default_precision() -> None:
    spec = CardinalitySpec("uid", "uid", periods=("day",))
    sketches: dict = {}
    t = ms("2014-01-17T12:00:00")
    for start in range(0, 1_000_000, 100_000):
        fold(spec, (ev(t, i) for i in range(start, start + 100_000)), sketches)
    estimate = estimate_of(sketches, (None, "day", "2014-01-17"))
    assert abs(estimate - 1_000_000) / 1_000_000 < 0.02


def test_values_are_hashed_by_their_text_and_repeats_do_not_count() -> None:
    spec = CardinalitySpec("uid", "uid", periods=("day",))
    sketches: dict = {}
    t = ms("2014-01-17T12:00:00")
    fold(spec, [ev(t, 1), ev(t, "1"), ev(t, 1), ev(t, 2), ev(t, None), ev(t, {"x": 1})], sketches)
    assert list(sketches) == [(None, "day", "2014-01-17")]
    assert estimate_of(sketches, (None, "day", "2014-01-17")) == pytest.approx(2)


@pytest.mark.parametrize(
    ("day", "period", "start"),
    [(date(2014, 1, 17), "week", date(2014, 1, 13)), (date(2014, 1, 13), "week", date(2014, 1, 13)),
     (date(2014, 1, 1), "week", date(2013, 12, 30)), (date(2014, 1, 17), "month", date(2014, 1, 1)),
     (date(2014, 1, 17), "day", date(2014, 1, 17))],
)
def test_calendar_periods(day: date, period: str, start: date) -> None:
    assert period_start(day, period) == start


def test_days_are_counted_in_the_configured_timezone() -> None:
    evening_utc = ms("2014-01-17T20:00:00")
    assert LocalDays()(evening_utc) == date(2014, 1, 17)
    assert LocalDays("Asia/Shanghai")(evening_utc) == date(2014, 1, 18)
    assert LocalDays("Asia/Kolkata")(ms("2014-01-17T18:29:59")) == date(2014, 1, 17)  # +05:30
    assert LocalDays("Asia/Kolkata")(ms("2014-01-17T18:30:00")) == date(2014, 1, 18)


@pytest.fixture(scope="module")
def counted(sample, tmp_path_factory: pytest.TempPathFactory):
    logs, _ = sample
    out = tmp_path_factory.mktemp("card")
    job = parse_config({
        "routes": [{"name": "dau", "match": {"category": "dau"}}],
        "cardinality": [{"name": "uid", "route": "dau", "field": "uid", "by": "area"}],
    })
    summary = run_backfill([str(logs / "*")], str(out), job, ["--runner", "FnApiRunner"])
    return out, summary


def test_daily_counts_match_the_exact_distinct_users(counted) -> None:
    out, summary = counted
    rows = ds.dataset(out / "events", format="parquet", partitioning="hive").to_table(
        filter=ds.field("category") == "dau").to_pylist()
    exact: dict[tuple[str, str], set] = {}
    for row in rows:
        exact.setdefault((row["area"], str(row["date"])), set()).add(orjson.loads(row["payload"])["uid"])
    results = [orjson.loads(line) for f in (out / "cardinality").glob("*.jsonl") for line in f.open("rb")]
    daily = {(r["key"], r["start"]): r["estimate"] for r in results if r["period"] == "day"}
    assert summary["cardinality"] == len(results) and set(daily) == set(exact)
    for slot, users in exact.items():
        assert abs(daily[slot] - len(users)) <= 0.02 * len(users)


def test_mau_is_the_union_of_daily_sketches(counted) -> None:
    out, _ = counted
    folder = str(out / "cardinality")
    from_days = query(folder, "uid", date(2014, 1, 1), date(2014, 1, 31), "day")
    from_month = query(folder, "uid", date(2014, 1, 1), date(2014, 1, 31), "month")
    assert from_days[None]["estimate"] == pytest.approx(from_month[None]["estimate"])
    per_day_sum = sum(r["estimate"] for r in query(folder, "uid", date(2014, 1, 17), date(2014, 1, 17), "day",
                                                   per_key=True).values())
    assert from_days[None]["estimate"] > per_day_sum  # later days add new users: union, not a sum of days


def test_cli(counted) -> None:
    out, _ = counted
    ok = subprocess.run([sys.executable, "-m", "pipelines.cardinality", "--input", str(out / "cardinality"),
                         "--counter", "uid", "--from", "2014-01-01", "--to", "2014-01-31", "--per-key"],
                        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert ok.returncode == 0 and ok.stdout.count("distinct") == 6 and "uid us 2014-01-01..2014-01-31" in ok.stdout
    none = subprocess.run([sys.executable, "-m", "pipelines.cardinality", "--input", str(out / "cardinality"),
                           "--counter", "nope", "--from", "2014-01-01", "--to", "2014-01-31"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert none.returncode == 1 and "no day sketches of 'nope'" in none.stderr
