"""File sinks of the embedded defaults: Parquet events and JSON Lines dead letters, through Beam's filesystems.

Each sink writes under a temporary folder first and renames its files into place only after every writer
has finished (like Beam's FileBasedSink): a reader never sees a half-written file, and files of a bundle
the runner retried are never published. An unbounded input never finishes, so there each file is renamed
into place when its bundle is done (still whole or absent). File names come from the input shard and batch
rank, so re-running the same backfill into the same output replaces files instead of adding copies.

In a stream, each Parquet file holds one batch, named after its spool cut (segment and start offset: the
spool source cuts the same batches again after a crash, connectors/spool_source.py), so a re-read after a
crash replaces the files it wrote before instead of adding copies. JSON Lines files there are named by when
they were written and never replaced; their rows carry an `_id` (results: branch, key and window; dead
letters: source, offset and stage), and a reader keeps the last row per `_id` (`latest_rows`), which is what
a re-read rewrites (docs/architecture.md, "Guarantees").
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

import apache_beam as beam
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from transforms.als import ParsedLines
from transforms.behaviour import BehaviourBatch, BehaviourRow
from transforms.event import ArchiveRows, DeadLetter, EventBatch, LineBatch
from transforms.keys import doc_ids
from transforms.tags import DEADLETTER
from transforms.times import MS_PER_DAY, utc_date

EVENT_SCHEMA = pa.schema(
    [
        ("area", pa.string()),
        ("ts", pa.timestamp("ms", tz="UTC")),
        ("payload", pa.string()),
        ("source", pa.string()),
        ("offset", pa.int64()),
        ("_id", pa.string()),
        ("_index", pa.string()),
    ]
)
"""Base columns of `events/` files; `category` and `date` are the Hive partition folders above them, and
the decorations the job configures follow as typed columns (one union schema for every category: a column
an event's category never sets is null)."""


def event_schema(decorations: list[tuple[str, pa.DataType]] = ()) -> pa.Schema:
    schema = EVENT_SCHEMA
    for name, typ in decorations:
        if schema.get_field_index(name) < 0:
            schema = schema.append(pa.field(name, typ))
    return schema



@dataclass(slots=True)
class WrittenFile:
    """One published output file and what it holds: rows, and summary counts such as {"categories": {...}}."""

    sink: str
    path: str
    rows: int
    counts: dict[str, Any] = field(default_factory=dict)
    temp: str = ""


def join(base: str, *parts: str) -> str:
    """Join path parts for local paths and URLs (s3://, hdfs://) alike."""
    return posixpath.join(base.rstrip("/"), *[p for p in parts if p])


class _Writer(Protocol):
    rows: int
    counts: dict[str, Any]

    def write(self, rows: Any) -> None: ...

    def close(self) -> None: ...


_PER_ROW_COLUMNS = frozenset({"payload", "_id", "offset", "ts"})
"""Columns (nearly) unique per row: a dictionary for them is built, found too large and dropped, for
nothing. The payload's min/max statistics (long JSON texts) serve no reader either."""


def _column_encoding(schema: pa.Schema) -> dict[str, Any]:
    """Parquet options per column: dictionary-encode the repetitive ones only (same rows, less CPU)."""
    return {"use_dictionary": [n for n in schema.names if n not in _PER_ROW_COLUMNS],
            "write_statistics": [n for n in schema.names if n != "payload"]}


class _ParquetWriter:
    """Arrow tables into one Parquet file; `count(table, counts)` keeps the summary counts of what it holds.
    With `sort_by`, rows are held until close and written sorted (the behaviour store: by user and time)."""

    def __init__(self, stream: BinaryIO, schema: pa.Schema, compression: str | None,
                 count: Callable[[pa.Table, dict], None], counts: dict[str, Any],
                 sort_by: list[str] | None = None) -> None:
        self._stream = stream
        self._writer = pq.ParquetWriter(stream, schema, compression=compression, **_column_encoding(schema))
        self._count, self.counts, self._sort_by = count, counts, sort_by
        self._held: list[pa.Table] = []
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        if self._sort_by:
            self._held.append(table)
        else:
            self._writer.write_table(table)
        self.rows += table.num_rows
        self._count(table, self.counts)

    def close(self) -> None:
        if self._held:
            table = pa.concat_tables(self._held).sort_by([(c, "ascending") for c in self._sort_by])
            self._writer.write_table(table)
        self._writer.close()
        self._stream.close()


def _event_counter(schema: pa.Schema, category: str) -> tuple[Callable[[pa.Table, dict], None], dict[str, Any]]:
    """Summary counts of an events file: events, per category, and values per decoration column."""
    decorations = schema.names[len(EVENT_SCHEMA):]

    def count(table: pa.Table, counts: dict[str, Any]) -> None:
        counts["events"] += table.num_rows
        counts["categories"][category] += table.num_rows
        decorated = counts["decorations"]
        for name in decorations:
            column = table.column(name)
            decorated[name] = decorated.get(name, 0) + len(column) - column.null_count

    return count, {"events": 0, "categories": {category: 0}, "decorations": {}}


class _JsonLinesWriter:
    """Rows as JSON Lines; `count(row, counts)` keeps the summary counts of what was written."""

    def __init__(self, stream: BinaryIO, to_dict: Callable[[Any], dict], count: Callable[[Any, dict], None],
                 counts: dict[str, Any]) -> None:
        self._stream, self._to_dict, self._count = stream, to_dict, count
        self.rows = 0
        self.counts = counts

    def write(self, rows: list[Any]) -> None:
        self._stream.write(b"".join(orjson.dumps(self._to_dict(r)) + b"\n" for r in rows))
        self.rows += len(rows)
        for row in rows:
            self._count(row, self.counts)

    def close(self) -> None:
        self._stream.close()


def _count_dead_letter(d: DeadLetter, counts: dict[str, Any]) -> None:
    if d.stage in DeadLetter.LINE_STAGES:
        counts["dead_letters"] += 1
        reasons = counts["dead_letter_reasons"]
        reasons[d.error] = reasons.get(d.error, 0) + 1
    else:
        sinks = counts["sink_failures"]
        sinks[d.stage] = sinks.get(d.stage, 0) + 1


def event_partitions(batch: EventBatch, schema: pa.Schema = EVENT_SCHEMA) -> Iterator[tuple[str, str, pa.Table]]:
    """Split a batch by (category, UTC date) into Arrow tables: (partition folder, category, table)."""
    groups: dict[tuple[str, int], list[int]] = {}
    events = batch.events
    days = [e.ts // MS_PER_DAY for e in events]
    if days and min(days) == max(days) and all(e.category == events[0].category for e in events):
        groups[(events[0].category, days[0])] = list(range(len(events)))  # a batch is mostly one partition
    for i, e in enumerate(events if not groups else ()):
        key = (e.category, e.ts // MS_PER_DAY)
        rows = groups.get(key)
        if rows is None:
            groups[key] = [i]
        else:
            rows.append(i)
    for (category, day), rows in groups.items():
        picked = events if len(rows) == len(events) else [events[i] for i in rows]
        columns = [
            pa.array([e.area for e in picked], pa.string()),
            pa.array([e.ts for e in picked], pa.int64()).cast(EVENT_SCHEMA.field("ts").type),
            # orjson checked the UTF-8 of payloads as received; changed fields are serialised again
            pa.array([e.payload if e.payload is not None else orjson.dumps(e.fields) for e in picked], pa.string()),
            pa.array([e.source for e in picked], pa.string()),
            pa.array([e.offset for e in picked], pa.int64()),
            pa.array([e.doc_id or None for e in picked], pa.string()),
            pa.array([e.index or None for e in picked], pa.string()),
        ]
        extra = {name: [None] * len(picked) for name in schema.names[len(EVENT_SCHEMA):]}
        if extra:
            for i, e in enumerate(picked):  # events carry a few of the many decoration columns
                for name, value in e.decor.items() if e.decor else ():
                    column = extra.get(name)
                    if column is not None:
                        column[i] = value
        columns += [pa.array(values, schema.field(name).type) for name, values in extra.items()]
        table = pa.Table.from_arrays(columns, schema=schema)
        yield f"category={category}/date={utc_date(day)}", category, table


def archive_rows(batch: LineBatch, parsed: ParsedLines, namer: Callable[[int], str]) -> ArchiveRows:
    """The archive's rows of a batch's parsed lines, built as Arrow columns: what `event_partitions` gives
    for the same lines once parsed and decorated without rules (the same ids, index names and values: tests
    compare the two), without making an `Event` per line."""
    ts = pa.array(parsed.ts, pa.int64())
    days = pc.divide(ts, MS_PER_DAY)  # event times are never negative: integer division is the floor
    distinct = pc.unique(days)
    names = pa.array([namer(day * MS_PER_DAY) for day in distinct.to_pylist()], pa.string())
    count = len(parsed.ts)
    table = pa.Table.from_arrays([
        pa.array(parsed.areas, pa.string()),
        ts.cast(EVENT_SCHEMA.field("ts").type),
        pa.array(parsed.payloads, pa.string()),  # orjson checked their UTF-8
        pa.repeat(pa.scalar(batch.source, pa.string()), count),
        pa.array(parsed.offsets, pa.int64()),
        pa.array(doc_ids(batch.source, parsed.offsets, parsed.raws), pa.string()),
        names.take(pc.index_in(days, distinct)) if len(distinct) > 1 else pa.repeat(names[0], count),
    ], schema=EVENT_SCHEMA)
    return ArchiveRows(batch.source, batch.shard, batch.seq, batch.category or "", table, batch.watermark_ms)


def row_partitions(rows: ArchiveRows) -> Iterator[tuple[str, str, pa.Table]]:
    """Split archive rows by UTC date (their category is one): (partition folder, category, table)."""
    table = rows.table
    days = pc.divide(table.column("ts").cast(pa.int64()), MS_PER_DAY)
    distinct = pc.unique(days).to_pylist()
    for day in distinct:
        part = table if len(distinct) == 1 else table.filter(pc.equal(days, day))
        yield f"category={rows.category}/date={utc_date(day)}", rows.category, part


class _ShardedWriteDoFn(beam.DoFn):
    """Writes elements to temp files, one per (file group, partition), and emits a WrittenFile per file.

    `group_of(element)` names a file group (an input shard): when it changes, the files of the previous group
    are closed, so a worker holds only one group's files open. `None` groups every element of the bundle.
    """

    def __init__(
        self,
        sink: str,
        output: str,
        temp_dir: str,
        ext: str,
        group_of: Callable[[Any], Any],
        stem_of: Callable[[Any], str],
        split: Callable[[Any], Iterable[tuple[str, Any, Any]]],
        opener: Callable[[BinaryIO, Any], _Writer],
    ) -> None:
        self._sink, self._output, self._temp, self._ext = sink, output, temp_dir, ext
        self._group_of, self._stem_of, self._split, self._opener = group_of, stem_of, split, opener
        self._files_counter = Metrics.counter("dpipe.write", f"{sink}_files")
        self._rows_counter = Metrics.counter("dpipe.write", f"{sink}_rows")

    def start_bundle(self) -> None:
        self._group: str | None = None
        self._stem = ""
        self._open: dict[str, tuple[str, str, _Writer]] = {}  # partition -> (temp, final, writer)

    def process(self, element: Any) -> Iterator[WrittenFile]:
        group = self._group_of(element)
        if self._open and group != self._group:
            yield from self._close_all()
        if not self._open:
            self._group, self._stem = group, self._stem_of(element)
        for partition, key, rows in self._split(element):
            if partition not in self._open:
                name = f"part-{self._stem}.{self._ext}"
                temp = join(self._temp, self._sink, partition, name)
                final = join(self._output, self._sink, partition, name)
                self._open[partition] = (temp, final, self._opener(FileSystems.create(temp), key))
            self._open[partition][2].write(rows)

    def finish_bundle(self) -> Iterator[WindowedValue]:
        for written in self._close_all():
            yield WindowedValue(written, GlobalWindow().max_timestamp(), [GlobalWindow()])

    def _close_all(self) -> Iterator[WrittenFile]:
        for temp, final, writer in self._open.values():
            writer.close()
            self._files_counter.inc()
            self._rows_counter.inc(writer.rows)
            yield WrittenFile(self._sink, final, writer.rows, dict(writer.counts), temp)
        self._open = {}


def _publish(files: list[WrittenFile]) -> list[WrittenFile]:
    """Move every temp file into place once all writers are done."""
    for f in sorted(files, key=lambda f: f.path):
        _ensure_parent(f.path)
        FileSystems.rename([f.temp], [f.path])
    return files


def _ensure_parent(path: str) -> None:
    parent = posixpath.dirname(path)
    if FileSystems.get_scheme(path) in (None, "file"):
        os.makedirs(parent, exist_ok=True)
    elif not FileSystems.exists(parent):
        with contextlib.suppress(OSError):  # created meanwhile, or an object store without folders
            FileSystems.mkdirs(parent)


def remove_tree(path: str) -> None:
    """Delete a temp folder and what is left in it (object stores: every object under the prefix)."""
    if FileSystems.exists(path):
        FileSystems.delete([path])


class _WriteShards(beam.PTransform):
    """`revisions`: the sink's rows are results that a stream re-emits under the same `_id` as they change;
    there each file is named by when it was written (`_revision_stem`), so that files sort in emission order
    and a later file never replaces an earlier one that shares its first row's id. `per_batch`: in a stream,
    each batch is a file group of its own (its file names then depend on the batch alone, not on how the
    runner bundled it)."""

    def __init__(self, writer: _ShardedWriteDoFn, revisions: bool = False,
                 per_batch: Callable[[Any], Any] | None = None) -> None:
        super().__init__()
        self._writer, self._revisions, self._per_batch = writer, revisions, per_batch

    def expand(self, pcoll: beam.PCollection) -> beam.PCollection:
        if self._revisions and not pcoll.is_bounded:
            self._writer._stem_of = _revision_stem
        if self._per_batch and not pcoll.is_bounded:
            self._writer._group_of = self._per_batch
        written = pcoll | "WriteTemp" >> beam.ParDo(self._writer)
        if not pcoll.is_bounded:  # a stream never ends: each file is published once its bundle is done
            return written | "Publish" >> beam.Map(lambda f: _publish([f])[0])
        return written | "AllWritten" >> beam.combiners.ToList() | "Publish" >> beam.FlatMap(_publish)


def _batch_stem(batch: EventBatch) -> str:
    return f"{batch.shard}-{batch.seq:06d}"


def _row_stem(row: Any) -> str:
    """A file named after its first row: stable when the same input is bundled the same way."""
    key = f"{row.source}\0{row.offset}\0{row.stage}" if isinstance(row, DeadLetter) else row.get("_id", repr(row))
    return hashlib.blake2b(key.encode(), digest_size=10).hexdigest()


def dead_letter_id(letter: DeadLetter) -> str:
    """A dead letter's `_id`: where its line is and which stage refused it (a re-read writes the same one)."""
    key = f"{letter.source}\0{letter.offset}\0{letter.stage}\0{letter.target or ''}"
    return hashlib.blake2b(key.encode(), digest_size=10).hexdigest()


def _dead_letter_row(letter: DeadLetter) -> dict[str, Any]:
    return {**letter.to_dict(), "_id": dead_letter_id(letter)}


def _revision_stem(row: Any) -> str:
    """Emission time (ns, fixed width) then the first row's id: sorted names are emission order."""
    return f"{time.time_ns():020d}-{_row_stem(row)}"


def latest_rows(folder: str) -> dict[str, dict]:
    """A results folder (`counters/`, `alarms/`...) as its last row per `_id`: what a stream converged on
    (files in name order, rows in file order: see `_revision_stem`)."""
    rows: dict[str, dict] = {}
    pattern = join(folder, "part-*.jsonl")
    paths = sorted(m.path for match in FileSystems.match([pattern]) for m in match.metadata_list)
    for path in paths:
        with FileSystems.open(path, compression_type="uncompressed") as f:
            for line in f.read().splitlines():
                if line:
                    row = orjson.loads(line)
                    rows[row["_id"]] = row
    return rows


class _WriteParquet(_WriteShards):
    """Batches with a shard and seq -> Parquet files per (batch shard, partition), named after the batch."""

    def __init__(self, sink: str, output: str, temp_dir: str, compression: str, schema: pa.Schema,
                 split: Callable[[Any], Iterable[tuple[str, Any, pa.Table]]],
                 counter: Callable[[Any], tuple[Callable[[pa.Table, dict], None], dict[str, Any]]],
                 sort_by: list[str] | None = None) -> None:
        codec = None if compression == "none" else compression
        super().__init__(
            _ShardedWriteDoFn(
                sink, output, temp_dir, "parquet",
                group_of=lambda b: b.shard,
                stem_of=_batch_stem,
                split=split,
                opener=lambda stream, key: _ParquetWriter(stream, schema, codec, *counter(key), sort_by=sort_by),
            ),
            per_batch=lambda b: (b.shard, b.seq),
        )


class WriteEventsParquet(_WriteParquet):
    """EventBatch -> `events/category=C/date=YYYY-MM-DD/part-*.parquet`; emits the published files."""

    def __init__(
        self, output: str, temp_dir: str, compression: str = "zstd", schema: pa.Schema = EVENT_SCHEMA
    ) -> None:
        super().__init__("events", output, temp_dir, compression, schema,
                         split=lambda batch: row_partitions(batch) if isinstance(batch, ArchiveRows)
                         else event_partitions(batch, schema),
                         counter=lambda category: _event_counter(schema, category))


BEHAVIOUR_SCHEMA = pa.schema([("user", pa.string()), ("ts", pa.timestamp("ms", tz="UTC")),
                              ("action", pa.string()), ("category", pa.string()), ("area", pa.string())])


def behaviour_schema(dimensions: Iterable[str] = ()) -> pa.Schema:
    """The store's columns: the base ones, then every configured dimension as text (null where absent)."""
    schema = BEHAVIOUR_SCHEMA
    for name in dimensions:
        if schema.get_field_index(name) < 0:
            schema = schema.append(pa.field(name, pa.string()))
    return schema


def behaviour_partitions(batch: BehaviourBatch, schema: pa.Schema) -> Iterator[tuple[str, None, pa.Table]]:
    """Split a batch of behaviour rows by UTC date into Arrow tables: (partition folder, None, table)."""
    days: dict[int, list[BehaviourRow]] = {}
    for row in batch.rows:
        days.setdefault(row.ts // MS_PER_DAY, []).append(row)
    dims = schema.names[len(BEHAVIOUR_SCHEMA):]
    for day, rows in days.items():
        ts = pa.array([r.ts for r in rows], pa.int64()).cast(schema.field("ts").type)
        columns = {
            "user": [r.user for r in rows], "ts": ts,
            "action": [r.action for r in rows], "category": [r.category for r in rows], "area": [r.area for r in rows],
            **{d: [r.dims.get(d) for r in rows] for d in dims},
        }
        yield f"date={utc_date(day)}", None, pa.table(columns, schema=schema)


def _count_behaviour(table: pa.Table, counts: dict[str, Any]) -> None:
    counts["behaviour"] += table.num_rows


class WriteBehaviour(_WriteParquet):
    """BehaviourBatch -> `behaviour/date=YYYY-MM-DD/part-*.parquet`, each file sorted by user and time."""

    def __init__(self, output: str, temp_dir: str, schema: pa.Schema, compression: str = "zstd") -> None:
        super().__init__("behaviour", output, temp_dir, compression, schema,
                         split=lambda batch: behaviour_partitions(batch, schema),
                         counter=lambda _: (_count_behaviour, {"behaviour": 0}), sort_by=["user", "ts"])


class WriteDeadLetters(_WriteShards):
    """DeadLetter -> `deadletter/part-*.jsonl` (raw, error, detail, source, offset, stage, category, target,
    `_id`); in a stream named by emission time like the results (see the module docstring)."""

    def __init__(self, output: str, temp_dir: str) -> None:
        super().__init__(
            _ShardedWriteDoFn(
                DEADLETTER, output, temp_dir, "jsonl",
                group_of=lambda _: None,
                stem_of=_row_stem,
                split=lambda letter: [("", None, [letter])],
                opener=lambda stream, _: _JsonLinesWriter(
                    stream, _dead_letter_row, _count_dead_letter,
                    {"dead_letters": 0, "dead_letter_reasons": {}, "sink_failures": {}},
                ),
            ),
            revisions=True,
        )


def _count_row(sink: str) -> Callable[[dict, dict], None]:
    def count(row: dict, counts: dict[str, Any]) -> None:
        counts[sink] = counts.get(sink, 0) + 1

    return count


class WriteJsonRows(_WriteShards):
    """Result dicts -> `<sink>/part-*.jsonl`, one object per line (counters, alarms, statistics...)."""

    def __init__(self, sink: str, output: str, temp_dir: str) -> None:
        super().__init__(
            _ShardedWriteDoFn(
                sink, output, temp_dir, "jsonl",
                group_of=lambda _: None,
                stem_of=_row_stem,
                split=lambda row: [("", None, [row])],
                opener=lambda stream, _: _JsonLinesWriter(stream, dict, _count_row(sink), {}),
            ),
            revisions=True,
        )
