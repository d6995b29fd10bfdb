"""Funnels over behaviour rows: users reaching each ordered step within a conversion window, per dimension.

Definition (the brute-force `reference_depths` spells it out; `FunnelTracker` computes the same in one pass):
- A user's rows are taken in time order; rows at the same millisecond are ordered by the first step they
  match, so a `visit` and a `cart` logged together count as visit -> cart.
- An attempt starts at a row matching step 1; its dimension values (`dimensions`, e.g. area) and its period
  (the calendar day/week/month of that row, UTC) are the first row's. It reaches step k when rows matching
  steps 2..k follow in order, each within `window` of the first row.
- `order: any` lets other rows come between the steps; `order: strict` ends an attempt at the first row that
  matches a step of the funnel but is not the attempt's next step (a repeated step included).
- Per (period, dimension values), a user counts once at each step up to the deepest any attempt reached.

Bounded inputs group each user's rows and run the tracker once (`FunnelCounts`). Unbounded inputs key each
row by (user, period) into the period's event-time window (the period plus the conversion window: rows after
its end can still advance its attempts); each pane recomputes the user's depths from all their rows so far,
so arrival order and delay do not matter, and a second windowed combine counts each user once per slot at
their latest pane's depth (transforms/lateness.py). Both agree on the same rows (tested).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import apache_beam as beam
from apache_beam.transforms import window

from transforms.behaviour import BehaviourBatch, BehaviourRow, row_fields
from transforms.fields import flat_name
from transforms.keys import result_id
from transforms.lateness import (
    DEFAULT_ALLOWED_LATENESS_S,
    DEFAULT_REFRESH_S,
    ConvergingCombine,
    Late,
    SlotWindows,
    cutoff,
)
from transforms.times import period_bounds, period_start, utc_day

ORDERS = ("any", "strict")
FUNNEL_REFRESH_S = 60
"""Streams re-emit running funnel counts this often: each refresh reads and writes the running state of every
user with new rows (a blocking round trip to the runner each), so less often than other running results."""
Slot = tuple[str, tuple[str, ...]]  # (period start, dimension values)


@dataclass(frozen=True)
class StepSpec:
    """A step: rows with this action whose columns equal `where` (a value or a list of allowed values)."""

    name: str
    action: str
    where: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def matches(self, row: BehaviourRow) -> bool:
        if row.action != self.action:
            return False
        return all(row.get(col) in allowed for col, allowed in self.where)


@dataclass(frozen=True)
class FunnelSpec:
    name: str
    steps: tuple[StepSpec, ...]
    window_ms: int
    order: str = "any"
    dimensions: tuple[str, ...] = ()
    period: str = "day"
    lateness_ms: int = DEFAULT_ALLOWED_LATENESS_S * 1000  # unbounded: how long a period stays open for late rows

    def step_hits(self, row: BehaviourRow) -> list[int]:
        return [i for i, step in enumerate(self.steps) if step.matches(row)]

    def slot(self, row: BehaviourRow) -> Slot:
        day = utc_day(row.ts)
        dims = tuple(row.get(flat_name(d)) or "" for d in self.dimensions)
        return period_start(day, self.period).isoformat(), dims


def sort_key(spec: FunnelSpec):
    """Time order; ties by the first step matched (rows matching no step last)."""
    n = len(spec.steps)

    def key(row: BehaviourRow) -> tuple[int, int]:
        hits = spec.step_hits(row)
        return row.ts, hits[0] if hits else n

    return key


@dataclass
class FunnelTracker:
    """One user's attempts. `feed` rows in time order; it returns the slots whose depth grew: (slot, old, new).

    Per slot, starts[k] is the latest first-row time of an attempt that has reached step k+1: the latest start
    leaves the most window for what follows, so it stands for every attempt at that depth. In strict order an
    attempt the row does not advance ends.
    """

    spec: FunnelSpec
    starts: dict[Slot, list[int | None]] = field(default_factory=dict)
    best: dict[Slot, int] = field(default_factory=dict)
    last_ts: int = 0

    def feed(self, row: BehaviourRow) -> list[tuple[Slot, int, int]]:
        hits = self.spec.step_hits(row)
        if not hits:
            return []
        self.last_ts = max(self.last_ts, row.ts)
        grown = []
        for slot, depth in self._advance(row.ts, hits, row):
            old = self.best.get(slot, 0)
            if depth > old:
                self.best[slot] = depth
                grown.append((slot, old, depth))
        return grown

    def _advance(self, ts: int, hits: list[int], row: BehaviourRow) -> Iterator[tuple[Slot, int]]:
        window, n, strict = self.spec.window_ms, len(self.spec.steps), self.spec.order == "strict"
        for slot, starts in self.starts.items():
            after: list[int | None] = [None] * n if strict else starts
            for k in sorted(hits, reverse=True):  # one row advances an attempt by one step at most
                if k > 0 and (s := starts[k - 1]) is not None and ts - s <= window and (
                        (a := after[k]) is None or s > a):
                    after[k] = s
                    yield slot, k + 1
            self.starts[slot] = after
        if hits[0] == 0:
            slot = self.spec.slot(row)
            self.starts.setdefault(slot, [None] * n)[0] = ts
            yield slot, 1

    def expire(self, now_ms: int) -> None:
        """Forget attempts that can no longer advance at `now_ms` (rows come in time order), and the depths of
        periods closed for good (their end + window + lateness has passed)."""
        window = self.spec.window_ms
        for slot, starts in list(self.starts.items()):
            if all(s is None or now_ms - s > window for s in starts):
                del self.starts[slot]
        for slot in [s for s in self.best if self._closes(s) <= now_ms]:
            del self.best[slot]

    def _closes(self, slot: Slot) -> int:
        return period_end_ms(slot[0], self.spec.period) + self.spec.window_ms + self.spec.lateness_ms

    def next_expiry(self) -> int | None:
        """When `expire` will next have something to forget (None when idle)."""
        times = [max(s for s in starts if s is not None) + self.spec.window_ms + 1 for starts in self.starts.values()
                 if any(s is not None for s in starts)]
        times += [self._closes(slot) for slot in self.best]
        return min(times) if times else None


def period_end_ms(start: str, period: str) -> int:
    """The end of a UTC calendar period (its first day, ISO) in epoch ms."""
    return period_bounds(start, period)[1]


def user_depths(spec: FunnelSpec, rows: Iterable[BehaviourRow]) -> dict[Slot, int]:
    """A user's deepest step per slot, from all their rows in any order (the bounded path)."""
    tracker = FunnelTracker(spec)
    for row in sorted(rows, key=sort_key(spec)):
        tracker.feed(row)
    return tracker.best


def reference_depths(spec: FunnelSpec, rows: Iterable[BehaviourRow]) -> dict[Slot, int]:
    """The definition, by brute force over every attempt (quadratic: for tests and the benchmark only)."""
    ordered = [r for r in sorted(rows, key=sort_key(spec)) if spec.step_hits(r)]
    n, best = len(spec.steps), dict[Slot, int]()
    for i, first in enumerate(ordered):
        if not spec.steps[0].matches(first):
            continue
        depth = 1
        for row in ordered[i + 1:]:
            if depth == n or row.ts - first.ts > spec.window_ms:
                break
            if spec.steps[depth].matches(row):
                depth += 1
            elif spec.order == "strict":
                break
        slot = spec.slot(first)
        best[slot] = max(best.get(slot, 0), depth)
    return best


def increments(old: int, new: int, n: int) -> tuple[int, ...]:
    """A user's depth went from old to new: one more user at steps old+1..new."""
    return tuple(1 if old < k <= new else 0 for k in range(1, n + 1))


def add_vectors(vectors: Iterable[tuple[int, ...]]) -> tuple[int, ...]:
    total: list[int] = []
    for v in vectors:
        if not total:
            total = list(v)
        else:
            for i, x in enumerate(v):
                total[i] += x
    return tuple(total)


def result(spec: FunnelSpec, slot: Slot, users: tuple[int, ...]) -> dict[str, Any]:
    """One output row: users per step, step-to-step and overall conversion."""
    start, dims = slot
    steps = []
    for i, (step, n) in enumerate(zip(spec.steps, users, strict=True)):
        prev = users[i - 1] if i else n
        steps.append({"step": step.name, "users": n, "conversion": round(n / prev, 4) if prev else 0.0})
    dimensions = dict(zip(spec.dimensions, dims, strict=True))
    return {
        "_id": result_id("funnel", spec.name, spec.period, start, dims),
        "funnel": spec.name, "period": spec.period, "start": start, "dimensions": dimensions, "steps": steps,
        "overall": round(users[-1] / users[0], 4) if users[0] else 0.0,
    }


def _user_rows(spec: FunnelSpec):
    def keyed(batch: BehaviourBatch) -> Iterator[tuple[str, BehaviourRow]]:
        for row in batch.rows:
            if spec.step_hits(row):
                yield row.user, row

    return keyed


def _bounded_changes(spec: FunnelSpec):
    n = len(spec.steps)

    def changes(user_rows: tuple[str, Iterable[BehaviourRow]]) -> Iterator[tuple[Slot, tuple[int, ...]]]:
        for slot, depth in user_depths(spec, user_rows[1]).items():
            yield slot, increments(0, depth, n)

    return changes


def period_window(spec: FunnelSpec, start: str) -> tuple[int, int]:
    """The event time [start, end) a period's attempts live in: the period, and a window after its end."""
    return period_bounds(start, "day")[0], period_end_ms(start, spec.period) + spec.window_ms


def periods_of(spec: FunnelSpec, ts_ms: int) -> list[str]:
    """The periods whose attempts a row at `ts_ms` can take part in: its own, and earlier ones still open
    (a row within `window` after a period's end can advance that period's attempts)."""
    day = utc_day(ts_ms)
    starts = [period_start(day, spec.period)]
    while True:
        before = period_start(starts[-1] - timedelta(days=1), spec.period)
        if period_end_ms(before.isoformat(), spec.period) + spec.window_ms <= ts_ms:
            break
        starts.append(before)
    return [d.isoformat() for d in starts]


def _user_periods(spec: FunnelSpec, late: Late):
    """Unbounded: each row keyed by (user, period) for every period it can take part in, stamped with its
    event time; rows of periods closed for their batch (transforms/lateness.py) are counted, not kept."""
    lateness = int(spec.lateness_ms)

    def keyed(batch: BehaviourBatch) -> Iterator[window.TimestampedValue]:
        closed = cutoff(batch.watermark_ms, lateness)
        for row in batch.rows:
            if not spec.step_hits(row):
                continue
            kept = False
            for start in periods_of(spec, row.ts):
                if closed is not None and period_window(spec, start)[1] <= closed:
                    continue
                kept = True
                yield window.TimestampedValue(((row.user, start), row), row.ts / 1000)
            if not kept:
                late.add(1)
        late.flush()

    return keyed


class _RowsFn(beam.CombineFn):
    """A user's rows of a period, as plain tuples (cheap to pickle: the running state holds them)."""

    def create_accumulator(self) -> list[tuple]:
        return []

    def add_input(self, acc: list[tuple], row: BehaviourRow) -> list[tuple]:
        acc.append(row_fields(row))
        return acc

    def merge_accumulators(self, accs: Iterable[list[tuple]]) -> list[tuple]:
        return [row for acc in accs for row in acc]

    def extract_output(self, acc: list[tuple]) -> list[tuple]:
        return acc


def period_depths(spec: FunnelSpec, user: str, start: str,
                  rows: list[tuple]) -> Iterator[tuple[Slot, tuple[str, int, int]]]:
    """All of a user's rows of one period so far -> the user's depth in each of that period's slots, tagged
    with the number of rows it stands on: rows only accumulate, so the depth from the most rows wins
    downstream, whatever order the panes arrive in."""
    for slot, depth in user_depths(spec, (BehaviourRow(*r) for r in rows)).items():
        if slot[0] == start:
            yield slot, (user, len(rows), depth)


class _LatestDepthsFn(beam.CombineFn):
    """(user, pane, depth) of a slot -> users per step, counting each user at their latest pane's depth."""

    def __init__(self, steps: int) -> None:
        self._steps = steps

    def create_accumulator(self) -> dict[str, tuple[int, int]]:
        return {}

    def add_input(self, acc: dict[str, tuple[int, int]], item: tuple[str, int, int]) -> dict[str, tuple[int, int]]:
        user, version, depth = item
        if user not in acc or acc[user][0] <= version:
            acc[user] = (version, depth)
        return acc

    def merge_accumulators(self, accs: Iterable[dict[str, tuple[int, int]]]) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for acc in accs:
            for user, (pane, depth) in acc.items():
                self.add_input(out, (user, pane, depth))
        return out

    def extract_output(self, acc: dict[str, tuple[int, int]]) -> tuple[int, ...]:
        return add_vectors(increments(0, depth, self._steps) for _, depth in acc.values())


class FunnelCounts(beam.PTransform):
    """BehaviourBatches -> one result per (period, dimension values): users per step and conversions.

    Bounded: exact counts once the input ends. Unbounded: running counts, re-emitted (whole so far) every
    `refresh_s` seconds of processing time while rows arrive.
    """

    def __init__(self, spec: FunnelSpec, refresh_s: float = FUNNEL_REFRESH_S) -> None:
        super().__init__(f"Funnel[{spec.name}]")
        self._spec, self._refresh = spec, refresh_s

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        spec = self._spec
        if not batches.is_bounded:
            return self._unbounded(batches)
        by_user = batches | "ByUser" >> beam.FlatMap(_user_rows(spec)).with_output_types(tuple[str, BehaviourRow])
        return (
            by_user
            | "GroupUsers" >> beam.GroupByKey()
            | "Depths" >> beam.FlatMap(_bounded_changes(spec))
            | "Sum" >> beam.CombinePerKey(add_vectors)
            | "Result" >> beam.MapTuple(lambda slot, users: result(spec, slot, users))
        )

    def _unbounded(self, batches: beam.PCollection) -> beam.PCollection:
        """Per (user, period): a running state keeps the rows of the period's window, each pane recomputes the
        user's depth from all of them (so order and delay do not matter), and a second running combine counts
        each user once per slot at their depth from the most rows."""
        spec, refresh = self._spec, self._refresh
        lateness_s = spec.lateness_ms / 1000
        late = Late(f"funnels/{spec.name}")
        return (
            batches
            | "ByUserPeriod" >> beam.FlatMap(_user_periods(spec, late)).with_output_types(
                tuple[tuple[str, str], BehaviourRow])
            | "UserRows" >> ConvergingCombine(_RowsFn(), SlotWindows(lambda key: period_window(spec, key[1])),
                                              lateness_s, refresh)
            | "UserDepths" >> beam.FlatMapTuple(lambda key, rows: period_depths(spec, key[0], key[1], rows))
            | "Count" >> ConvergingCombine(_LatestDepthsFn(len(spec.steps)),  # few keys: its own panes come soon
                                           SlotWindows(lambda slot: period_window(spec, slot[0])), lateness_s,
                                           min(refresh, DEFAULT_REFRESH_S))
            | "Result" >> beam.MapTuple(lambda slot, users: result(spec, slot, users))
            | "Global" >> beam.WindowInto(window.GlobalWindows())
        )
