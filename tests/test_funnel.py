"""Funnels: known answers on hand-written series, the tracker against the brute-force definition, and the
bounded and unbounded transforms agreeing on the same rows."""

from __future__ import annotations

import random
from pathlib import Path

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.backfill import run_backfill
from pipelines.config import ConfigError, load_config, parse_config
from pipelines.funnel import format_funnels, read_results
from pipelines.funnel import main as funnel_cli
from tests.conftest import PINNED, runner_options
from transforms.behaviour import BehaviourBatch, BehaviourRow, row_fields
from transforms.funnel import FunnelCounts, FunnelSpec, StepSpec, period_depths, reference_depths, user_depths

ROOT = Path(__file__).resolve().parent.parent
MIN = 60_000
DAY = 86_400_000
T0 = 1_389_916_800_000  # 2014-01-17 00:00 UTC


def spec(order: str = "any", window_ms: int = 30 * MIN, dims: tuple[str, ...] = ()) -> FunnelSpec:
    pay = StepSpec("pay", "pay", (("category", ("payment",)),))
    steps = (StepSpec("visit", "visit"), StepSpec("cart", "cart"), pay)
    return FunnelSpec("shop", steps, window_ms, order, dims)


def row(action: str, minute: float, area: str = "us", user: str = "u1", category: str = "click") -> BehaviourRow:
    if action == "pay":
        category = "payment"
    return BehaviourRow(user, T0 + int(minute * MIN), action, category, area)


def depth(s: FunnelSpec, rows: list[BehaviourRow]) -> int:
    depths = user_depths(s, rows)
    assert depths == reference_depths(s, rows)  # every known answer is also the definition's
    return max(depths.values(), default=0)


def test_known_answers() -> None:
    s = spec()
    assert depth(s, [row("visit", 0), row("cart", 5), row("pay", 10)]) == 3
    assert depth(s, [row("pay", 10), row("cart", 5), row("visit", 0)]) == 3, "arrival order does not matter"
    assert depth(s, [row("cart", 0), row("pay", 1)]) == 0, "no first step, no attempt"
    assert depth(s, [row("visit", 0), row("pay", 1), row("cart", 2)]) == 2, "steps out of order"
    assert depth(s, [row("visit", 0), row("cart", 0), row("pay", 0)]) == 3, "ties in time follow the steps"
    assert depth(s, [row("visit", 0), row("cart", 20), row("pay", 31)]) == 2, "pay is 31 min after the visit"
    assert depth(s, [row("visit", 0), row("cart", 30), row("pay", 30)]) == 3, "the window's edge is inside"
    # a later visit restarts the clock: 0 -> 25 -> 40 fails from the first visit, works from the second
    assert depth(s, [row("visit", 0), row("visit", 20), row("cart", 25), row("pay", 40)]) == 3
    wrong = BehaviourRow("u1", T0 + 10 * MIN, "pay", "click", "us")
    assert depth(s, [row("visit", 0), row("cart", 5), wrong]) == 2, "a step's condition must hold"


def test_a_streams_depth_per_period_is_tagged_with_the_rows_it_stands_on() -> None:
    """The stream's running state holds a user's rows as tuples; the depth from more rows wins downstream."""
    s = spec()
    rows = [row_fields(r) for r in (row("pay", 10), row("visit", 0), row("cart", 5))]
    start = s.slot(row("visit", 0))[0]
    assert list(period_depths(s, "u1", start, rows[:2])) == [((start, ()), ("u1", 2, 1))]
    assert list(period_depths(s, "u1", start, rows)) == [((start, ()), ("u1", 3, 3))]
    assert list(period_depths(s, "u1", "1999-01-01", rows)) == []  # only the asked period's slots


def test_strict_order_ends_an_attempt_at_any_other_step() -> None:
    s = spec("strict")
    assert depth(s, [row("visit", 0), row("cart", 5), row("pay", 10)]) == 3
    assert depth(s, [row("visit", 0), row("cart", 5), row("cart", 6), row("pay", 10)]) == 2, "repeated step"
    assert depth(s, [row("visit", 0), row("cart", 5), row("visit", 6), row("pay", 10)]) == 2
    assert depth(spec("any"), [row("visit", 0), row("cart", 5), row("cart", 6), row("pay", 10)]) == 3
    other = BehaviourRow("u1", T0 + 7 * MIN, "search", "click", "us")  # not a step: does not interrupt
    assert depth(s, [row("visit", 0), row("cart", 5), other, row("pay", 10)]) == 3


def test_periods_and_dimensions_come_from_the_first_step() -> None:
    s = FunnelSpec("shop", spec().steps, DAY, "any", ("area",), "day")
    rows = [row("visit", 24 * 60 - 10, "fr"), row("cart", 24 * 60 + 5, "us"), row("pay", 24 * 60 + 6, "us")]
    assert user_depths(s, rows) == {("2014-01-17", ("fr",)): 3}, "crosses midnight: counted on the first day"
    rows.append(row("visit", 24 * 60 + 1, "us"))
    assert user_depths(s, rows) == {("2014-01-17", ("fr",)): 3, ("2014-01-18", ("us",)): 3}


series = st.lists(
    st.tuples(st.sampled_from(["visit", "cart", "pay", "other"]), st.integers(0, 90), st.sampled_from(["us", "fr"])),
    max_size=14,
)


@settings(max_examples=400, deadline=None)
@given(series, st.sampled_from(["any", "strict"]), st.sampled_from([5, 30, 24 * 60]))
def test_the_tracker_computes_the_definition(events, order: str, window_min: int) -> None:
    s = spec(order, window_min * MIN, ("area",))
    rows = [row(a, m, area) for a, m, area in events]
    assert user_depths(s, rows) == reference_depths(s, rows)


def random_rows(users: int, seed: int) -> list[BehaviourRow]:
    rng = random.Random(seed)
    rows = []
    for u in range(users):
        t = rng.uniform(0, 2 * 24 * 60)
        for _ in range(rng.randint(1, 8)):
            t += rng.expovariate(1 / 12)
            rows.append(row(rng.choice(["visit", "visit", "cart", "pay", "other"]), t, rng.choice(["us", "fr"]),
                            f"u{u}"))
    return rows


def expected(s: FunnelSpec, rows: list[BehaviourRow]) -> dict[tuple, list[int]]:
    """Users per step per (period, dims), from the brute-force definition."""
    by_user: dict[str, list[BehaviourRow]] = {}
    for r in rows:
        by_user.setdefault(r.user, []).append(r)
    counts: dict[tuple, list[int]] = {}
    for user_rows in by_user.values():
        for (start, dims), d in reference_depths(s, user_rows).items():
            users = counts.setdefault((start, dims), [0] * len(s.steps))
            for k in range(d):
                users[k] += 1
    return counts


def as_counts(result: dict) -> tuple:
    return result["start"], tuple(result["dimensions"].values()), tuple(step["users"] for step in result["steps"])


def test_bounded_and_unbounded_agree_with_the_definition() -> None:
    s = FunnelSpec("shop", spec().steps, 30 * MIN, "any", ("area",), "day")
    rows = random_rows(300, seed=3)
    truth = sorted((start, dims, tuple(users)) for (start, dims), users in expected(s, rows).items())
    assert sum(u[0] for *_, u in truth) > 100 and any(u[2] for *_, u in truth)

    with beam.Pipeline(options=runner_options()) as p:
        counted = p | beam.Create([BehaviourBatch("s", 0, rows)]) | FunnelCounts(s) | beam.Map(as_counts)
        assert_that(counted, equal_to(truth))

    # unbounded: 6 bursts of consecutive time, shuffled inside; the watermark follows each burst, so users'
    # trackers are fed, expired and woken again while the stream goes on
    ordered = sorted(rows, key=lambda r: r.ts)
    stream = TestStream()
    rng = random.Random(5)
    for i in range(6):
        burst = ordered[i * len(ordered) // 6:(i + 1) * len(ordered) // 6]
        rng.shuffle(burst)
        stream.add_elements([window.TimestampedValue(BehaviourBatch("s", i, [r]), r.ts / 1000) for r in burst])
        stream.advance_watermark_to(max(r.ts for r in burst) / 1000)
    stream.advance_watermark_to_infinity()
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(runner="BundleBasedDirectRunner", options=options) as p:
        results = p | stream | FunnelCounts(s, refresh_s=3600) | beam.Map(as_counts)
        assert_that(results, equal_to(truth))


@pytest.fixture(scope="module")
def demo(sample, tmp_path_factory: pytest.TempPathFactory):
    logs, manifest = sample
    out = tmp_path_factory.mktemp("funnel-demo")
    job = load_config(ROOT / "templates" / "jobs" / "engine.als.yaml")
    summary = run_backfill([str(logs / "*")], str(out), job, PINNED)
    return manifest, out, summary


def per_area(results: list[dict]) -> dict[str, dict[str, int]]:
    return {r["dimensions"]["area"]: {s["step"]: s["users"] for s in r["steps"]} for r in results}


def test_the_demo_funnel_has_the_conversions_the_generator_built_in(demo) -> None:
    manifest, out, summary = demo
    results = read_results(str(out))
    assert per_area(results) == manifest["funnel"]["per_area"]
    assert summary["funnels"] == len(results) == 6
    for r in results:
        rates = manifest["funnel"]["rates"][r["dimensions"]["area"]]
        assert r["steps"][1]["conversion"] == pytest.approx(rates["cart_per_visit"], abs=0.12)
    table = format_funnels(results)
    assert "visit->cart" in table and len(table.splitlines()) == 2 + 6


def test_the_behaviour_store_is_sorted_by_user_and_time_and_answers_the_same_funnel(demo, tmp_path, capsys) -> None:
    manifest, out, summary = demo
    files = sorted((out / "behaviour").glob("date=*/*.parquet"))
    assert files and sum(pq.read_metadata(f).num_rows for f in files) == summary["behaviour"]
    for f in files:
        rows = pq.read_table(f).to_pylist()
        assert [(r["user"], r["ts"]) for r in rows] == sorted((r["user"], r["ts"]) for r in rows)
    code = funnel_cli(["--config", str(ROOT / "templates" / "jobs" / "engine.als.yaml"), "--input", str(out),
                       "--from", "2014-01-01", "--to", "2014-01-31", "--output", str(tmp_path), *PINNED])
    assert code == 0 and "visit->cart" in capsys.readouterr().out
    assert per_area(read_results(str(tmp_path))) == manifest["funnel"]["per_area"]
    assert funnel_cli(["--config", str(ROOT / "templates" / "jobs" / "engine.als.yaml"), "--input", str(out),
                       "--from", "2015-01-01", "--to", "2015-01-31", *PINNED]) == 2
    assert "no behaviour files" in capsys.readouterr().err


def test_funnel_config_errors_name_the_key() -> None:
    base = {"routes": [{"name": "shop"}], "behaviour": [{"route": "shop", "user_field": "uid", "action": "x"}]}
    steps = [{"name": "a", "action": "x"}, {"name": "b", "action": "y"}]
    with pytest.raises(ConfigError, match=r"funnels.f.dimensions: 'ver' is no behaviour column"):
        parse_config({**base, "funnels": [{"name": "f", "steps": steps, "dimensions": ["ver"]}]})
    with pytest.raises(ConfigError, match=r"funnels.0.steps"):
        parse_config({**base, "funnels": [{"name": "f", "steps": steps[:1]}]})
    with pytest.raises(ConfigError, match=r"funnels need a `behaviour:` section"):
        parse_config({"funnels": [{"name": "f", "steps": steps}]})
    with pytest.raises(ConfigError, match=r"exactly one of action_field"):
        parse_config({"routes": [{"name": "shop"}], "behaviour": [{"route": "shop", "user_field": "uid"}]})
