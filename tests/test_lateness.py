"""The lateness rule of every windowed branch under TestStream (transforms/lateness.py): a line within the
allowed lateness corrects its window's result under the same `_id` (the last pane is the whole window), a line
later than that is left out and counted, and the rule's pure pieces (cutoff, windows of slots and periods)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that
from apache_beam.transforms import combiners, window

from tests.servers.prism import PrismServer
from transforms.behaviour import BehaviourBatch, BehaviourRow
from transforms.cardinality import Cardinality, CardinalitySpec
from transforms.counters import BufferedCounter, CounterSpec
from transforms.decorate import IndexNamer
from transforms.event import Event, EventBatch
from transforms.funnel import FunnelCounts, FunnelSpec, StepSpec, periods_of
from transforms.lateness import ConvergingCombine, cutoff, runner_lateness, running_merge
from transforms.times import period_bounds

S = 1000
T0 = 1_389_916_800  # 2014-01-17 00:00 UTC, seconds
LATENESS = 600  # s


def event(second: float, user: str = "u1", area: str = "fr") -> Event:
    ts = int((T0 + second) * S)
    return Event(area, ts, "pv", {"uid": user}, "s", ts, b"", b"{}", {})


Step = tuple[str, Any]  # ("events", [Event...]) | ("watermark", second)


def run(transform: beam.PTransform, steps: list[Step], make: Callable[[list, int | None, int], Any],
        check: Callable[[list[dict]], None], tick_s: float = 0, runner: list[str] | None = None) -> None:
    """Feed batches stamped, as the spool source does, with the watermark they were read under; `tick_s` of
    processing time after each batch lets open windows fire their early panes. `runner`: pipeline flags
    (default: the BundleBasedDirectRunner)."""
    stream = TestStream()
    watermark_ms = None
    for i, (kind, what) in enumerate(steps):
        if kind == "events":
            stream.add_elements([window.TimestampedValue(make(what, watermark_ms, i), what[0].ts / S)])
            if tick_s:
                stream.advance_processing_time(tick_s)
        else:
            stream.advance_watermark_to(T0 + what)
            watermark_ms = (T0 + what) * S
    stream.advance_watermark_to_infinity()
    options = streaming_options(runner)
    with beam.Pipeline(options=options) as p:
        assert_that(p | stream | transform, check)


def streaming_options(runner: list[str] | None) -> PipelineOptions:
    """Streaming pipeline options for `runner`'s flags (default: the BundleBasedDirectRunner)."""
    options = PipelineOptions(runner or ["--runner=BundleBasedDirectRunner"])
    options.view_as(StandardOptions).streaming = True
    return options


@pytest.fixture(params=["direct", "prism"])
def runner(request: pytest.FixtureRequest) -> list[str] | None:
    """Both local streaming runners: Prism keeps state and expires windows its own way (a stateful DoFn's
    state ends with its window, whatever the allowed lateness: transforms.lateness._Outlive)."""
    if request.param == "direct":
        return None
    server: PrismServer = request.getfixturevalue("prism")
    return server.options()


def events_batch(events: list[Event], watermark_ms: int | None, i: int) -> EventBatch:
    return EventBatch("s", "s", i, events, watermark_ms=watermark_ms)


def last_by_id(rows: list[dict]) -> dict[str, dict]:
    """Accumulating panes only grow here, so the largest count per `_id` is the last pane."""
    out: dict[str, dict] = {}
    for row in rows:
        key = row.get("counter", "") + row["_id"]
        if key not in out or (row.get("count") or row.get("estimate") or 0) >= (
                out[key].get("count") or out[key].get("estimate") or 0):
            out[key] = row
    return out


STEPS: list[Step] = [
    ("events", [event(10), event(20)]), ("watermark", 120),  # the minute 0:00 closes with 2
    ("events", [event(30)]),  # 90 s late, within 600 s: corrects 0:00 to 3
    ("watermark", 60 + LATENESS + 60),  # 0:00 is now past its end + lateness
    ("events", [event(40), event(700)]),  # 0:00: later than the lateness, left out; 0:11 on time
]


def test_counters_take_late_lines_within_the_lateness_and_leave_out_later_ones(runner: list[str] | None) -> None:
    spec = CounterSpec("hits", 60, by="area", lateness_s=LATENESS)

    def check(rows: list[dict]) -> None:
        final = {r["start"][11:19]: r["count"] for r in last_by_id(rows).values()}
        assert final == {"00:00:00": 3, "00:11:00": 1}
        assert any(r["start"].endswith("00:00:00Z") and r["count"] == 2 for r in rows), "the on-time pane"

    run(BufferedCounter(spec, IndexNamer("rs", "@ym")), STEPS, events_batch, check, runner=runner)


def test_a_running_combine_merges_every_pane_even_after_its_windows_end(runner: list[str] | None) -> None:
    """Two early panes, then a late one: each result is the whole so far (2, 3, 4), the late one included,
    though the runner's panes are discarding and the window's end has passed before it (the direct runner
    also fires an empty on-time pane: 3 again)."""
    stream = (TestStream()
              .add_elements([window.TimestampedValue(("k", 1), T0 + 10), window.TimestampedValue(("k", 2), T0 + 20)])
              .advance_processing_time(2)
              .add_elements([window.TimestampedValue(("k", 3), T0 + 30)])
              .advance_processing_time(2)
              .advance_watermark_to(T0 + 70)
              .add_elements([window.TimestampedValue(("k", 4), T0 + 40)])  # late, within the lateness
              .advance_watermark_to(T0 + 200)
              .advance_watermark_to_infinity())

    def check(counts: list[int]) -> None:
        assert sorted(set(counts)) == [2, 3, 4], counts

    options = streaming_options(runner)
    with beam.Pipeline(options=options) as p:
        assert_that(p | stream | ConvergingCombine(combiners.CountCombineFn(), window.FixedWindows(60), LATENESS, 1)
                    | beam.Values(), check)


def test_cardinality_takes_late_users_within_the_lateness(runner: list[str] | None) -> None:
    spec = CardinalitySpec("users", "uid", periods=("day",), lateness_s=LATENESS)
    steps: list[Step] = [
        ("events", [event(10, "a"), event(20, "b")]), ("watermark", 86_400 + 60),  # the day closes with 2
        ("events", [event(30, "c")]),  # 60 s after the day's end: within the lateness
        ("watermark", 86_400 + LATENESS + 60),
        ("events", [event(40, "d")]),  # later than the lateness: left out
    ]

    def check(rows: list[dict]) -> None:
        assert {r["_id"] for r in rows} == {rows[0]["_id"]}  # one day, one id, several panes
        assert max(round(r["estimate"]) for r in rows) == 3

    run(Cardinality(spec), steps, events_batch, check, runner=runner)


def test_a_late_row_within_the_lateness_completes_a_funnel(runner: list[str] | None) -> None:
    steps_ = (StepSpec("visit", "visit"), StepSpec("pay", "pay"))
    spec = FunnelSpec("buy", steps_, window_ms=3600 * S, lateness_ms=LATENESS * S)

    def rows(events: list[Event], watermark_ms: int | None, i: int) -> BehaviourBatch:
        """Behaviour rows whose action is the event's area field (see `feed`)."""
        return BehaviourBatch("s", i, [BehaviourRow(e.fields["uid"], e.ts, e.area, "click", "fr") for e in events],
                              watermark_ms)

    day = 86_400
    feed: list[Step] = [
        ("events", [event(day - 100, "u1", "pay")]), ("watermark", day + 3600 + 60),  # pay first: the period closes
        ("events", [event(day - 200, "u1", "visit")]),  # the visit, late but within the lateness
    ]

    def check(results: list[dict]) -> None:
        final = max(results, key=lambda r: r["steps"][-1]["users"])
        assert [s["users"] for s in final["steps"]] == [1, 1]  # arrival order does not matter

    run(FunnelCounts(spec, refresh_s=3600), feed, rows, check, runner=runner)


MERGED: list[int] = []  # the LOOPBACK and direct runners' workers run in this process


class _CountedSum(beam.CombineFn):
    """A sum that notes how many partials each merge takes: the work of a pane."""

    def create_accumulator(self) -> int:
        return 0

    def add_input(self, acc: int, x: int) -> int:
        MERGED.append(1)
        return acc + x

    def merge_accumulators(self, accs: Any) -> int:
        accs = list(accs)
        MERGED.append(len(accs))
        return sum(accs)

    def extract_output(self, acc: int) -> int:
        return acc


def test_a_panes_work_does_not_grow_with_the_windows_age(runner: list[str] | None) -> None:
    """A partial and an early pane per second for a minute: each pane merges its own partials into the
    running result (about 3 merge inputs per pane), where accumulating panes would merge all partials so far
    at every pane (1 + 2 + ... + 60)."""
    panes = 60
    stream = TestStream()
    for i in range(panes):
        stream.add_elements([window.TimestampedValue(("k", 1), T0 + i)]).advance_processing_time(1.5)
    stream.advance_watermark_to_infinity()
    options = streaming_options(runner)
    MERGED.clear()
    with beam.Pipeline(options=options) as p:
        totals = p | stream | ConvergingCombine(_CountedSum(), window.GlobalWindows(), 0, 1) | beam.Values()
        assert_that(totals, lambda got: max(got) == panes or pytest.fail(f"totals {sorted(got)}"))
    assert sum(MERGED) <= 4 * panes, f"{sum(MERGED)} partials merged for {panes} panes"


def test_the_rules_pure_pieces() -> None:
    count = combiners.CountCombineFn()
    assert running_merge(count, None, 2) == 2 and running_merge(count, 2, 1) == 3  # the first pane, then deltas
    assert cutoff(None, 60_000) is None  # bounded: nothing is late
    assert cutoff(1_000_000, 60_000) == 940_000
    assert runner_lateness(3600) == 7200 and runner_lateness(0) == 600  # wider than dpipe's own rule
    start, end = period_bounds("2014-01-17", "day", "Asia/Bangkok")  # UTC+7: local midnights
    assert (end - start, start) == (86_400_000, (T0 - 7 * 3600) * S)
    assert period_bounds("2014-02-01", "month")[1] - period_bounds("2014-02-01", "month")[0] == 28 * 86_400_000
    day_spec = FunnelSpec("f", (StepSpec("a", "a"), StepSpec("b", "b")), window_ms=3600 * S)
    assert periods_of(day_spec, (T0 + 1800) * S) == ["2014-01-17", "2014-01-16"]  # within an hour of midnight
    assert periods_of(day_spec, (T0 + 7200) * S) == ["2014-01-17"]


@pytest.mark.parametrize("late", [0, 1])
def test_an_alarm_partial_later_than_the_lateness_is_left_out(late: int) -> None:
    from transforms.alarms import Alarms, RuleSpec

    rule = RuleSpec("three", 60, 60, threshold=3, lateness_s=LATENESS)
    # the third line of the minute, read before or after the window's lateness ran out
    steps: list[Step] = [("events", [event(10), event(20)]), ("watermark", 120 + late * LATENESS),
                         ("events", [event(30)]), ("watermark", 3 * LATENESS)]

    def check(alarms: list[dict]) -> None:
        assert len([a for a in alarms if a["revision"] == 0]) == (0 if late else 1)

    run(Alarms("Alarms", [rule]), steps, events_batch, check)
