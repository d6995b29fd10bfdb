"""The ALS line parser: `area,unix_ts,{json}` -> Event, or a DeadLetter with the original's reason.

Rules (docs/architecture.md, "The ALS line"): split on the first two commas; area non-empty, UTF-8, without
control characters; ts an unsigned decimal, milliseconds above 1283931748344, invalid below 1262275200
(2010-01-01), seconds otherwise; payload a JSON object (empty = `{}`); one trailing `\\r` is stripped (the reader
already removed `\\n`); a line over MAX_LINE_BYTES is a dead letter. Historical timestamps are kept as they are:
the original's unsigned-subtraction bug that turned old lines into "now" is not reproduced. Optional bounds
(`max_age`, `max_future`) send out-of-range events to the dead letters instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import apache_beam as beam
import orjson
from apache_beam.metrics import Metrics

from transforms.event import DeadLetter, Event, EventBatch, LineBatch, decode_raw, tune_gc
from transforms.tags import DEADLETTER

MS_THRESHOLD = 1283931748344  # above: milliseconds (dpipe als/line.go)
MIN_SECONDS = 1262275200  # below: invalid (2010-01-01, as in the original)
MAX_MS = 253402300800000  # 10000-01-01: beyond any calendar a date partition can name
MAX_LINE_BYTES = 2**20
"""Longest line parsed (the gateway's default max_line_bytes too). Readers cut longer ones to
MAX_LINE_BYTES + 1 bytes, which makes them a `line too long` dead letter with that start as raw."""

EMPTY_LINE = "empty line"
NOT_3_FIELDS = "not 3 fields"
EMPTY_AREA = "empty area"
BAD_AREA = "area not utf-8"
AREA_CONTROL = "area has control characters"
TS_INVALID = "timestamp invalid"
NOT_JSON = "payload not json"
TOO_OLD = "timestamp too old"
TOO_NEW = "timestamp in the future"
UNKNOWN_CATEGORY = "category unknown"
LINE_TOO_LONG = "line too long"

_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")


@dataclass(frozen=True, slots=True)
class TimeBounds:
    """Accepted event times in ms, inclusive; None = unbounded. Fixed once per run so workers agree."""

    min_ms: int | None = None
    max_ms: int | None = None

    @classmethod
    def around(cls, now_ms: int, max_age_s: float | None, max_future_s: float | None) -> TimeBounds:
        return cls(
            None if max_age_s is None else now_ms - int(max_age_s * 1000),
            None if max_future_s is None else now_ms + int(max_future_s * 1000),
        )


NO_BOUNDS = TimeBounds()


def parse_timestamp(text: bytes) -> int | None:
    """ALS timestamp -> ms since the epoch, or None when it is not a valid one."""
    if not text.isdigit():  # rejects '', signs, spaces and '1_000', which int() would take
        return None
    value = int(text)
    if value > MS_THRESHOLD:
        ms = value
    elif value < MIN_SECONDS:
        return None
    else:
        ms = value * 1000
    return ms if ms < MAX_MS else None


def parse_line(
    raw: bytes | str,
    source: str,
    offset: int | None = None,
    category: str = "",
    bounds: TimeBounds = NO_BOUNDS,
) -> Event | DeadLetter:
    """Parse one line (without its `\\n`) into an Event, or say why not with a DeadLetter."""
    line = raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else raw
    if line.endswith(b"\r"):
        line = line[:-1]
    if not line:
        return _dead(raw, EMPTY_LINE, source, offset, category)
    if len(line) > MAX_LINE_BYTES:
        return _dead(raw[:MAX_LINE_BYTES], LINE_TOO_LONG, source, offset, category,
                     f"longer than {MAX_LINE_BYTES} bytes: cut, its first {MAX_LINE_BYTES} bytes kept")
    parts = line.split(b",", 2)
    if len(parts) != 3:
        return _dead(raw, NOT_3_FIELDS, source, offset, category)
    area_b, ts_b, payload = parts
    if not area_b:
        return _dead(raw, EMPTY_AREA, source, offset, category)
    try:
        area = area_b.decode("utf-8")
    except UnicodeDecodeError:
        return _dead(raw, BAD_AREA, source, offset, category)
    if _CONTROL.search(area_b):  # a NUL or an escape sequence must not reach partitions, indices or terminals
        return _dead(raw, AREA_CONTROL, source, offset, category)
    ts = parse_timestamp(ts_b)
    if ts is None:
        return _dead(raw, TS_INVALID, source, offset, category, ts_b.decode("utf-8", "backslashreplace"))
    if bounds.min_ms is not None and ts < bounds.min_ms:
        return _dead(raw, TOO_OLD, source, offset, category)
    if bounds.max_ms is not None and ts > bounds.max_ms:
        return _dead(raw, TOO_NEW, source, offset, category)
    if not payload:
        payload = b"{}"
        fields = {}
    else:
        try:
            fields = orjson.loads(payload)
        except orjson.JSONDecodeError as err:
            return _dead(raw, NOT_JSON, source, offset, category, str(err))
        if type(fields) is not dict:
            return _dead(raw, NOT_JSON, source, offset, category, f"a JSON {type(fields).__name__}, not an object")
    return Event(area, ts, category, fields, source, -1 if offset is None else offset, line, payload)


def _dead(
    raw: bytes | str, reason: str, source: str, offset: int | None, category: str, detail: str | None = None
) -> DeadLetter:
    text = raw if isinstance(raw, str) else decode_raw(raw)
    return DeadLetter(text, reason, source, offset, "parse", detail, category or None)


@dataclass(slots=True)
class ParsedLines:
    """The events of one LineBatch as parallel lists, in line order: what `Event`s are made of, or the
    archive's Arrow columns directly when nothing else reads the events (connectors.files.archive_rows)."""

    areas: list[str] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    fields: list[dict[str, Any]] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    raws: list[bytes] = field(default_factory=list)
    payloads: list[bytes] = field(default_factory=list)


def parse_lines(batch: LineBatch, bounds: TimeBounds = NO_BOUNDS) -> tuple[ParsedLines, list[DeadLetter]]:
    """Parse every line of a batch: each line becomes exactly one event or one dead letter, the same as
    `parse_line` gives it (the reference; tests compare the two on every kind of line).

    The hot path of a backfill (docs/architecture.md): a line of the common shape (three fields, a known good
    area, an all-digit timestamp, a non-empty JSON object, no `\\r`) is parsed inline with the checks it
    needs, area validity looked up once per distinct area; every other line goes through `parse_line`.
    """
    out = ParsedLines()
    dead: list[DeadLetter] = []
    source = batch.source
    if batch.category is None:
        for offset, line in zip(batch.offsets, batch.lines, strict=True):
            dead.append(
                DeadLetter(decode_raw(line), UNKNOWN_CATEGORY, source, offset, "parse", batch.category_error)
            )
        return out, dead
    category = batch.category
    add_area, add_ts, add_fields = out.areas.append, out.ts.append, out.fields.append
    add_offset, add_raw, add_payload = out.offsets.append, out.raws.append, out.payloads.append
    loads = orjson.loads
    min_ms = 0 if bounds.min_ms is None else max(bounds.min_ms, 0)
    max_ms = MAX_MS - 1 if bounds.max_ms is None else min(bounds.max_ms, MAX_MS - 1)
    areas: dict[bytes, str | None] = {}  # area bytes -> the area, or None when it is not a good one
    lines = batch.lines
    long_lines = bool(lines) and max(map(len, lines)) > MAX_LINE_BYTES  # readers cut them: rare, all slow
    for offset, line in zip(batch.offsets, lines, strict=True):
        parts = line.split(b",", 2)
        if len(parts) == 3 and line[-1] != 13 and not long_lines:  # 13: b"\r"
            area_b, ts_b, payload = parts
            area = areas.get(area_b, "")
            if area == "":
                area = areas[area_b] = _good_area(area_b)
            if area is not None and payload and ts_b.isdigit() and len(ts_b) < 19:
                ms = int(ts_b)
                if ms <= MS_THRESHOLD:
                    ms = ms * 1000 if ms >= MIN_SECONDS else -1
                if min_ms <= ms <= max_ms:
                    try:
                        fields = loads(payload)
                    except orjson.JSONDecodeError:
                        fields = None
                    if type(fields) is dict:
                        add_area(area)
                        add_ts(ms)
                        add_fields(fields)
                        add_offset(offset)
                        add_raw(line)
                        add_payload(payload)
                        continue
        result = parse_line(line, source, offset, category, bounds)
        if isinstance(result, Event):
            add_area(result.area)
            add_ts(result.ts)
            add_fields(result.fields)
            add_offset(result.offset)
            add_raw(result.raw)
            add_payload(result.payload)  # type: ignore[arg-type]  # parse_line always sets it
        else:
            dead.append(result)
    return out, dead


def parse_batch(batch: LineBatch, bounds: TimeBounds = NO_BOUNDS) -> tuple[EventBatch, list[DeadLetter]]:
    """`parse_lines`, as Event objects (what decoration, routes and every analysis read)."""
    parsed, dead = parse_lines(batch, bounds)
    out = EventBatch(batch.source, batch.shard, batch.seq, watermark_ms=batch.watermark_ms)
    category, source = batch.category or "", batch.source
    out.events = [
        Event(area, ts, category, fields, source, offset, raw, payload)
        for area, ts, fields, offset, raw, payload in zip(
            parsed.areas, parsed.ts, parsed.fields, parsed.offsets, parsed.raws, parsed.payloads, strict=True)
    ]
    return out, dead


def _good_area(area_b: bytes) -> str | None:
    """The area of `area,ts,payload` when `parse_line` would accept it, else None (it says why)."""
    if not area_b or _CONTROL.search(area_b):
        return None
    try:
        return area_b.decode("utf-8")
    except UnicodeDecodeError:
        return None


RowsOf = Callable[[LineBatch, ParsedLines], Any]
"""Builds a batch's output straight from its parsed lines (connectors.files.archive_rows) instead of Events."""


class _ParseDoFn(beam.DoFn):
    def __init__(self, bounds: TimeBounds, rows_of: RowsOf | None = None) -> None:
        self._bounds, self._rows_of = bounds, rows_of
        self._events = Metrics.counter("dpipe.parse", "events")
        self._dead = Metrics.counter("dpipe.parse", "dead_letters")

    def setup(self) -> None:
        tune_gc()

    def process(self, batch: LineBatch) -> Iterator[Any]:
        out: Any
        if self._rows_of is None:
            events, dead = parse_batch(batch, self._bounds)
            count, out = len(events.events), events
        else:
            parsed, dead = parse_lines(batch, self._bounds)
            count = len(parsed.ts)
            out = self._rows_of(batch, parsed) if count else None
        self._events.inc(count)
        self._dead.inc(len(dead))
        for letter in dead:  # few: a counter per reason is cheap, and what an operator graphs
            Metrics.counter("dpipe.dead_letters", letter.error).inc()
        if count:
            yield out
        for letter in dead:
            yield beam.pvalue.TaggedOutput(DEADLETTER, letter)


class ParseAls(beam.PTransform):
    """LineBatch -> EventBatch (main output) and DeadLetter (output `deadletter`).

    `result = lines | ParseAls(bounds)`; `result.events`, `result.deadletter`. With `rows_of` (and its
    output type), the main output is what it builds from each batch's parsed lines: the archive's rows when
    nothing else reads the events (pipelines/graph.py).
    """

    def __init__(self, bounds: TimeBounds = NO_BOUNDS, label: str | None = None,
                 rows_of: RowsOf | None = None, rows_type: type = EventBatch) -> None:
        super().__init__(label)
        self._bounds, self._rows_of, self._type = bounds, rows_of, rows_type

    def expand(self, lines: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        parse = beam.ParDo(_ParseDoFn(self._bounds, self._rows_of)).with_output_types(self._type)
        return lines | "Parse" >> parse.with_outputs(DEADLETTER, main="events")


def events_of(batches: Iterable[EventBatch]) -> list[Event]:
    """Flatten batches (handy in tests and baselines)."""
    return [e for b in batches for e in b.events]
