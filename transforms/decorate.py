"""Decoration (the original's EsFilter, done right): the rule engine and the Decorate PTransform.

A rule applies ops (`transforms/decoration/`, one per module, registered in `OPS`) to the events its
matcher selects. Always: the index name (`@ym`, `@yw`, `@ymd`, UTC, custom prefixes such as `rs@ym`) and a
deterministic document id (transforms/keys.py). Decorations of dotted keys are top-level names with `_` for
`.` (`_log_info_level_rg`); the original created literal dotted top-level keys.

An op that cannot apply raises OpError: the event goes to the dead letters with the op's name and reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics

from transforms.decoration import Op, OpError
from transforms.event import DeadLetter, Event, EventBatch, decode_raw, tune_gc
from transforms.keys import doc_id, doc_ids
from transforms.tags import COUNTS, DEADLETTER

# -- always: index name and document id -------------------------------------------------------------------


class IndexNamer:
    """`@ym` -> `<prefix>_YYYY_MM`, `@yw` (or `@ymw`) -> `<prefix>_YYYY_wWW` (ISO week), `@ymd` ->
    `<prefix>_YYYY_MM_DD`, UTC; `rs@ym` uses `rs` as the prefix; a pattern without `@` is a fixed name
    `<prefix>_<pattern>`."""

    FORMATS = {"@ym": "%Y_%m", "@yw": "%G_w%V", "@ymw": "%G_w%V", "@ymd": "%Y_%m_%d"}

    def __init__(self, prefix: str, pattern: str) -> None:
        at = pattern.find("@")
        if at < 0:
            self.fixed: str | None = f"{prefix}_{pattern}" if pattern else prefix
            return
        self.fixed = None
        self.prefix = pattern[:at] or prefix
        self.fmt = self.FORMATS[pattern[at:]]
        self._by_day: dict[int, str] = {}

    def __call__(self, ts_ms: int) -> str:
        if self.fixed is not None:
            return self.fixed
        day = ts_ms // 86_400_000
        name = self._by_day.get(day)
        if name is None:
            name = f"{self.prefix}_{datetime.fromtimestamp(day * 86400, UTC).strftime(self.fmt)}"
            self._by_day[day] = name
        return name


# -- rules and the transform --------------------------------------------------------------------------------


@dataclass
class Rule:
    """Ops applied to the events a matcher selects (`matcher` is transforms.route.Matcher or None = all)."""

    ops: list[Op]
    matcher: Any = None


def rule_columns(rules: Sequence[Rule]) -> list[tuple[str, pa.DataType]]:
    seen: dict[str, pa.DataType] = {}
    for rule in rules:
        for op in rule.ops:
            for name, typ in op.columns():
                seen.setdefault(name, typ)
    return list(seen.items())


def apply_ops(event: Event, ops: Sequence[Op], counts: dict[str, int]) -> DeadLetter | None:
    """Run ops in order on one event; a failure becomes a dead letter (and the event must be dropped)."""
    try:
        for op in ops:
            op.apply(event, counts)
    except OpError as err:
        return DeadLetter(decode_raw(event.raw), err.reason, event.source, event.offset, "decorate", err.detail,
                          event.category)
    return None


def decorate_batch(
    batch: EventBatch, rules: Sequence[Rule], namer: IndexNamer, counts: dict[str, int]
) -> tuple[EventBatch, list[DeadLetter]]:
    """Decorate every event of a batch: each comes out decorated, or as one dead letter."""
    out = EventBatch(batch.source, batch.shard, batch.seq, watermark_ms=batch.watermark_ms)
    dead: list[DeadLetter] = []
    kept = out.events
    # Per category: the rules that can apply, each with its per-event check (None: the category decides).
    by_category: dict[str, list[tuple[Callable[[Event], bool] | None, list[Op]]]] = {}
    for event, id_ in zip(batch.events, _batch_ids(batch.events), strict=True):
        event.decor = {}
        event.index = namer(event.ts)
        event.doc_id = id_
        candidates = by_category.get(event.category)
        if candidates is None:
            candidates = by_category[event.category] = [
                (None if r.matcher is None or r.matcher.by_category_only else r.matcher.event_ok, r.ops)
                for r in rules if r.matcher is None or r.matcher.category_ok(event.category)
            ]
        if not candidates:  # most events of most jobs: the id and index name are all they get
            kept.append(event)
            continue
        failed = None
        for check, ops in candidates:
            if check is None or check(event):
                failed = apply_ops(event, ops, counts)
                if failed:
                    break
        if failed:
            dead.append(failed)
        else:
            kept.append(event)
    return out, dead


def _batch_ids(events: list[Event]) -> list[str]:
    """Document ids of a batch's events: at once when they share a source (a batch is one shard's)."""
    if events and all(e.source is events[0].source for e in events):
        return doc_ids(events[0].source, [e.offset for e in events], [e.raw for e in events])
    return [doc_id(e.source, e.offset, e.raw) for e in events]


class _DecorateDoFn(beam.DoFn):
    def __init__(self, rules: list[Rule], namer: IndexNamer) -> None:
        self._rules, self._namer = rules, namer
        self._dead = Metrics.counter("dpipe.decorate", "dead_letters")

    def setup(self) -> None:
        tune_gc()
        for rule in self._rules:
            for op in rule.ops:
                op.setup()

    def process(self, batch: EventBatch) -> Iterator[Any]:
        counts: dict[str, int] = {}
        events, dead = decorate_batch(batch, self._rules, self._namer, counts)
        self._dead.inc(len(dead))
        if events.events:
            yield events
        for letter in dead:
            yield beam.pvalue.TaggedOutput(DEADLETTER, letter)
        if counts:
            for name, n in counts.items():
                Metrics.counter("dpipe.decorate", name).inc(n)
            yield beam.pvalue.TaggedOutput(COUNTS, {"decorate": counts})


class Decorate(beam.PTransform):
    """EventBatch -> decorated EventBatch (main), DeadLetter (`deadletter`), count dicts (`counts`)."""

    def __init__(self, rules: list[Rule], namer: IndexNamer) -> None:
        super().__init__()
        self._fn = _DecorateDoFn(rules, namer)

    def expand(self, batches: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return batches | "Decorate" >> beam.ParDo(self._fn).with_output_types(EventBatch).with_outputs(
            DEADLETTER, COUNTS, main="events"
        )
