"""Sliding-window alarms (the original's AlarmOutput, done right).

A rule selects events (a route, field conditions, regex ignores), groups them (e.g. area + message
fingerprint), aggregates them over sliding event-time windows (size, period: count, sum or mean of a field,
distinct values) and compares each window with a threshold (>=, >, <=, <) or with the previous window
(abnormal change: percent over a minimum base). A rule fires at most once per (rule, key, window), then
cools down per (rule, key) for `cooldown` of event time, so one spike is one alarm, not one per overlapping
window. Everything is in event time: a backfill raises the alarms a live run would have raised.

A bounded run evaluates each key's windows in time order once its input ends. An unbounded run puts each
partial into its sliding window (transforms/lateness.py): the runner keeps the window and fires a pane every
second while it is open, at the watermark, and per late partial; each (rule, key) keeps its windows' latest
panes in one keyed state cell and evaluates them as the bounded run does. A rule whose value only grows
(count or distinct, with >=, > or an abnormal rise) fires at the first pane after the crossing; the others
(sum, mean, <=, <) once the window has closed. Notifications go out once, at the first firing; a closed
window whose value changed is re-emitted with a higher `revision` under the same `_id`. Lines later than
`lateness` are counted (`dpipe.late/alarms/<rule>`) and left out. Tested: the same alarms as the bounded run.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import apache_beam as beam
import orjson
from apache_beam.coders import coders
from apache_beam.transforms import userstate, window
from apache_beam.utils.windowed_value import PaneInfoTiming

from transforms.event import MISSING, Event, EventBatch, decode_raw
from transforms.fields import reader
from transforms.keys import result_id
from transforms.lateness import DEFAULT_ALLOWED_LATENESS_S, Late, SlotWindows, converging, cutoff
from transforms.partials import PartialsDoFn
from transforms.route import Matcher
from transforms.times import iso_ms

COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt,
}


@dataclass(frozen=True)
class RuleSpec:
    name: str
    size_s: int
    period_s: int
    aggregate: str = "count"  # count | sum | mean | distinct
    field: str | None = None
    group_by: tuple[str, ...] = ()
    where: Matcher | None = None
    ignore: tuple[str, ...] = ()  # regexes: an event whose `ignore_field` matches one is not counted
    ignore_field: str = "message"
    op: str = ">="
    threshold: float | None = None
    change_percent: float | None = None  # abnormal change against the previous window, instead of a threshold
    min_base: float = 1.0
    severity: int = 3
    cooldown_s: int = 0
    samples: int = 3
    lateness_s: int = DEFAULT_ALLOWED_LATENESS_S

    @property
    def fires_early(self) -> bool:
        """The value only grows as events arrive and the rule fires on growth: no need to wait for the end."""
        return self.aggregate in ("count", "distinct") and (self.change_percent is not None or self.op in (">=", ">"))


class Acc(NamedTuple):
    """A window's partial of a (rule, key): events, the sum and count of numeric values, distinct values
    (capped) and a few sample raw lines."""

    events: int
    total: float
    numbers: int
    distinct: frozenset
    samples: tuple[str, ...]


EMPTY = Acc(0, 0.0, 0, frozenset(), ())
DISTINCT_CAP = 100_000  # distinct values kept per window and key; beyond it, the count is a lower bound


def window_starts(ts_ms: int, size_ms: int, period_ms: int) -> range:
    """Starts of the sliding windows [start, start + size) holding `ts_ms`."""
    last = ts_ms - ts_ms % period_ms
    return range(last - size_ms + period_ms, last + 1, period_ms)


def add(acc: Acc, value: Any, sample: str | None, rule: RuleSpec) -> Acc:
    events, total, numbers, distinct, samples = acc
    if type(value) in (int, float):
        total += value
        numbers += 1
    if rule.aggregate == "distinct" and value is not MISSING and value is not None and len(distinct) < DISTINCT_CAP:
        distinct = distinct | {value if type(value) is str else str(value)}
    if sample is not None and len(samples) < rule.samples:
        samples = (*samples, sample)
    return Acc(events + 1, total, numbers, distinct, samples)


def merge(a: Acc, b: Acc, samples: int) -> Acc:
    distinct = a.distinct | b.distinct if len(a.distinct) + len(b.distinct) <= DISTINCT_CAP else a.distinct
    return Acc(a.events + b.events, a.total + b.total, a.numbers + b.numbers, distinct,
               (a.samples + b.samples)[:samples])


def value_of(acc: Acc, rule: RuleSpec) -> float:
    events, total, numbers, distinct, _ = acc
    if rule.aggregate == "count":
        return events
    if rule.aggregate == "sum":
        return total
    if rule.aggregate == "mean":
        return total / numbers if numbers else 0.0
    return len(distinct)


class _Selector:
    """Per event: does the rule count it, under which key, with which value (built on the worker)."""

    def __init__(self, rule: RuleSpec) -> None:
        self.rule = rule
        self.keys = [reader(k) for k in rule.group_by]
        self.value = reader(rule.field) if rule.field else None
        self.ignored = reader(rule.ignore_field)
        self.ignores = [re.compile(p) for p in rule.ignore]

    def select(self, event: Event) -> tuple[tuple, Any] | None:
        rule = self.rule
        if rule.where is not None and not rule.where(event):
            return None
        if self.ignores:
            text = self.ignored(event)
            if type(text) is str and any(p.search(text) for p in self.ignores):
                return None
        key = tuple(None if (k := get(event)) is MISSING else k for get in self.keys)
        return key, self.value(event) if self.value else None


class Windows(dict):
    """A (rule, key)'s accumulators by window start, as a bundle emits them. Its own type so that it is pickled
    in one call when sized or encoded: in a plain dict the generic coder walks every window and pickles each
    accumulator's frozenset of distinct values on its own (~570k calls per million lines of the demo job)."""

    __slots__ = ()


beam.coders.registry.register_coder(Windows, coders.PickleCoder)


class AlarmFolder:
    """One accumulator per (rule, key, window start) per bundle (transforms/partials.py). Bounded: one element
    per (rule, key) with all its windows; unbounded (`per_window`): one per window, in that window's event
    time, leaving out (and counting) events of windows closed for their batch (transforms/lateness.py)."""

    def __init__(self, rules: list[RuleSpec], per_window: bool = False) -> None:
        self._selectors = [_Selector(r) for r in rules]
        self._per_window = per_window
        self.branches: Sequence[str] = [f"alarms/{r.name}" for r in rules]

    def fold(self, batch: EventBatch, parts: dict[tuple, Acc], late_of: dict[str, Late]) -> None:
        for selector in self._selectors:
            rule = selector.rule
            size, period = rule.size_s * 1000, rule.period_s * 1000
            closed = cutoff(batch.watermark_ms, rule.lateness_s * 1000)
            late = 0
            for event in batch.events:
                picked = selector.select(event)
                if picked is None:
                    continue
                key, value = picked
                starts = window_starts(event.ts, size, period)
                if closed is not None and starts[-1] + size <= closed:
                    late += 1  # even its last window is closed
                for start in starts:
                    if closed is not None and start + size <= closed:
                        continue
                    slot = (rule.name, key, start)
                    acc = parts.get(slot, EMPTY)
                    sample = decode_raw(event.raw) if len(acc.samples) < rule.samples else None
                    parts[slot] = add(acc, value, sample, rule)
            late_of[f"alarms/{rule.name}"].add(late)

    def emit(self, parts: dict[tuple, Acc]) -> Iterator[tuple[tuple, Any, float]]:
        """One element per (rule, key) with all its windows: Beam pays per element, so not one per window."""
        if self._per_window:
            for slot, acc in parts.items():
                yield slot, acc, slot[2] / 1000
            return
        per_key: dict[tuple, Windows] = {}
        for (name, key, start), acc in parts.items():
            windows = per_key.get((name, key))
            if windows is None:
                windows = per_key[(name, key)] = Windows()
            windows[start] = acc
        for slot, windows in per_key.items():
            yield slot, windows, min(windows) / 1000


def partials(rules: list[RuleSpec], per_window: bool = False) -> PartialsDoFn:
    return PartialsDoFn(lambda: AlarmFolder(rules, per_window), 200_000)


def evaluate(rule: RuleSpec, key: tuple, windows: Iterable[tuple[int, Acc]],
             last_fired: int | None = None) -> Iterator[dict[str, Any]]:
    """Alarms of one (rule, key), windows in time order: once per window, then a cooldown (from `last_fired`,
    the start of a window that fired before these)."""
    size, period, cooldown = rule.size_s * 1000, rule.period_s * 1000, rule.cooldown_s * 1000
    by_start = dict(windows)
    for start in sorted(by_start):
        acc = by_start[start]
        value = value_of(acc, rule)
        if rule.change_percent is not None:
            base = value_of(by_start.get(start - period, EMPTY), rule)
            fires = base >= rule.min_base and (value - base) * 100 >= rule.change_percent * base
            detail: dict[str, Any] = {"previous": base, "change_percent": rule.change_percent,
                                      "min_base": rule.min_base}
        else:
            assert rule.threshold is not None  # the config requires a threshold or a change_percent
            fires = COMPARE[rule.op](value, rule.threshold)
            detail = {"op": rule.op, "threshold": rule.threshold}
        if not fires or (last_fired is not None and start - last_fired < cooldown):
            continue
        last_fired = start
        yield {
            "_id": result_id("alarm", rule.name, key, start),
            "rule": rule.name,
            "key": dict(zip(rule.group_by, key, strict=True)),
            "window": {"start": iso_ms(start), "end": iso_ms(start + size)},
            "_t": start + size,
            "aggregate": rule.aggregate if rule.field is None else f"{rule.aggregate}({rule.field})",
            "value": value,
            **detail,
            "severity": rule.severity,
            "samples": list(acc.samples),
        }


class _MergeFn(beam.CombineFn):
    def __init__(self, rules: list[RuleSpec]) -> None:
        self._samples = {r.name: r.samples for r in rules}
        self._copy_first = all(r.samples <= 1000 for r in rules)

    def create_accumulator(self) -> dict[int, Acc]:
        return Windows()  # as the partials: pickled in one call when the runner samples the results' sizes

    def add_input(self, acc: dict[int, Acc], windows: dict[int, Acc]) -> dict[int, Acc]:
        if not acc and self._copy_first:  # merge(EMPTY, part) is part: a key's first partial is taken as it is
            acc.update(windows)
            return acc
        for start, part in windows.items():
            acc[start] = merge(acc.get(start, EMPTY), part, 1000)
        return acc

    def merge_accumulators(self, accs: Iterable[dict[int, Acc]]) -> dict[int, Acc]:
        out = self.create_accumulator()
        for acc in accs:
            self.add_input(out, acc)
        return out

    def extract_output(self, acc: dict[int, Acc]) -> dict[int, Acc]:
        return acc

    def get_accumulator_coder(self) -> coders.Coder:
        """One pickle per accumulator: the default coder walks each window's tuple and pickles its frozenset of
        distinct values on its own (one call per window: ~570k per million lines of the demo job)."""
        return coders.PickleCoder()


def _alarms(rules: dict[str, RuleSpec], item: tuple[tuple, dict[int, Acc]]) -> Iterator[dict[str, Any]]:
    (name, key), windows = item
    rule = rules[name]
    yield from evaluate(rule, key, ((s, a._replace(samples=a.samples[: rule.samples])) for s, a in windows.items()))


@dataclass
class _Book:
    """What a (rule, key) keeps in a stream: its windows' latest panes, which of them have closed (their
    on-time pane came: the watermark passed their end), the revision and value last emitted per fired window,
    the last fired start among windows already forgotten (for the cooldown), and the latest closed end."""

    windows: dict[int, Acc]
    closed: set[int]
    fired: dict[int, tuple[int, float]]
    last_dropped_fire: int | None = None
    horizon: int = -(2**62)


_BOOK = beam.DoFn.StateParam(userstate.ReadModifyWriteStateSpec("book", coders.PickleCoder()))


def settle(rule: RuleSpec, key: tuple, book: _Book) -> Iterator[dict[str, Any]]:
    """Evaluate a (rule, key)'s windows in time order as the bounded run does: growing values as soon as they
    cross, the others once closed; a fired window is corrected (a later `revision`, same `_id`) once closed.
    Then forget windows past their end + lateness + one period (the next window's base for a change)."""
    size, period, lateness = rule.size_s * 1000, rule.period_s * 1000, rule.lateness_s * 1000
    ready = [(s, book.windows[s]) for s in sorted(book.windows) if rule.fires_early or s in book.closed]
    for alarm in evaluate(rule, key, ready, book.last_dropped_fire):
        start = alarm["_t"] - size
        before = book.fired.get(start)
        revise = before is not None and before[1] != alarm["value"] and start in book.closed
        if before is None or revise:
            revision = 0 if before is None else before[0] + 1
            book.fired[start] = (revision, alarm["value"])
            yield {**alarm, "revision": revision}  # a later revision corrects the row; Notify skips it
    for start in [s for s in book.windows if s + size + lateness + period <= book.horizon]:
        del book.windows[start]
        book.closed.discard(start)
        if start in book.fired:
            del book.fired[start]
            book.last_dropped_fire = max(start, book.last_dropped_fire or start)


class _LiveAlarmsDoFn(beam.DoFn):
    """Unbounded: the panes of each (rule, key)'s windows (runner-kept, see `Alarms`) meet in one keyed state
    cell, read and written once per pane; no timers (an on-time pane says a window has closed)."""

    def __init__(self, rules: list[RuleSpec]) -> None:
        self._rules = {r.name: r for r in rules}

    def process(self, element: tuple[str, tuple[int, Acc, bool]], state=_BOOK) -> Iterator[dict[str, Any]]:
        rule_name, key = _rule_key(element[0])
        start, acc, closed = element[1]
        rule = self._rules[rule_name]
        book: _Book = state.read() or _Book({}, set(), {})
        # a pane of a window already forgotten (the runner's lateness is wider than the rule's) is ignored
        if start + rule.size_s * 1000 + rule.lateness_s * 1000 + rule.period_s * 1000 > book.horizon:
            book.windows[start] = acc
            if closed:
                book.closed.add(start)
                book.horizon = max(book.horizon, start + rule.size_s * 1000)
            yield from settle(rule, key, book)
            state.write(book)


def _rule_key(key: str) -> tuple[str, tuple]:
    name, _, rest = key.partition("\0")
    return name, tuple(orjson.loads(rest))


def _text_key(name: str, key: tuple) -> str:
    """A text key for keyed state (a tuple key has no deterministic coder)."""
    return f"{name}\0{orjson.dumps(list(key)).decode()}"


class _PaneDoFn(beam.DoFn):
    """A window's pane -> the (rule, key)'s element: window start, accumulator, and whether it has closed."""

    def process(self, element: tuple[tuple, Acc], pane=beam.DoFn.PaneInfoParam) -> Iterator[tuple[str, Any]]:
        (name, key, start), acc = element
        yield _text_key(name, key), (start, acc, pane.timing != PaneInfoTiming.EARLY)


class _AccMergeFn(beam.CombineFn):
    def create_accumulator(self) -> Acc:
        return EMPTY

    def add_input(self, acc: Acc, part: Acc) -> Acc:
        return merge(acc, part, MAX_SAMPLES)

    def merge_accumulators(self, accs: Iterable[Acc]) -> Acc:
        return functools.reduce(lambda a, b: merge(a, b, MAX_SAMPLES), accs, EMPTY)

    def extract_output(self, acc: Acc) -> Acc:
        return acc

    def get_accumulator_coder(self) -> coders.Coder:
        return coders.PickleCoder()


MAX_SAMPLES = 20
EARLY_S = 1
"""Panes of open windows every second: a growing value fires within about a second of its crossing."""


class Alarms(beam.PTransform):
    """EventBatch (a route's) -> alarm documents, for every rule that reads that route."""

    def __init__(self, label: str, rules: list[RuleSpec]) -> None:
        super().__init__(label)
        self._rules = rules

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        by_name = {r.name: r for r in self._rules}
        if batches.is_bounded:
            return (
                batches
                | "Windows" >> beam.ParDo(partials(self._rules)).with_output_types(tuple[tuple, Windows])
                | "PerRuleAndKey" >> beam.CombinePerKey(_MergeFn(self._rules))
                | "Evaluate" >> beam.FlatMap(functools.partial(_alarms, by_name))
            )
        sizes = {r.name: r.size_s * 1000 for r in self._rules}
        lateness = max(r.lateness_s for r in self._rules)
        return (
            batches
            | "WindowPartials" >> beam.ParDo(partials(self._rules, per_window=True)).with_output_types(
                tuple[tuple, Any])
            | "SlidingWindows" >> converging(SlotWindows(lambda slot: (slot[2], slot[2] + sizes[slot[0]])),
                                             lateness, EARLY_S)
            | "PerWindow" >> beam.CombinePerKey(_AccMergeFn())
            | "Panes" >> beam.ParDo(_PaneDoFn()).with_output_types(tuple[str, Any])
            | "Global" >> beam.WindowInto(window.GlobalWindows())
            | "Live" >> beam.ParDo(_LiveAlarmsDoFn(self._rules))
        )
