"""The event model: what flows between dpipe's transforms.

The bounded hot path carries *batches* (docs/architecture.md): a `LineBatch` of raw lines from one source becomes an
`EventBatch` plus individual `DeadLetter`s. Per-event work is a loop inside one DoFn call, so Beam's
per-element cost is paid once per batch, not once per line.
"""

from __future__ import annotations

import gc
import pickle
from dataclasses import dataclass, field
from typing import Any

from apache_beam import coders


@dataclass(slots=True)
class Event:
    """One parsed ALS line.

    `ts` is milliseconds since the epoch (UTC): second-resolution lines are scaled up, millisecond lines keep
    their precision. `raw` is the line as read (without its end of line), kept for dead letters, document ids
    and replays; `payload` is its JSON text, which the archive stores unchanged (None once `fields` changed).
    `decor` holds the decorations (top-level names such as `_cntry`, `level_rg`, `_usd`), apart from the
    payload so that the archive can type them; `doc_id` and `index` are set by the decoration stage.
    """

    area: str
    ts: int
    category: str
    fields: dict[str, Any]
    source: str
    offset: int
    raw: bytes
    payload: bytes | None
    decor: dict[str, Any] | None = None
    doc_id: str = ""
    index: str = ""

    def document(self, drop: tuple[tuple[str, ...], ...] = ()) -> dict[str, Any]:
        """The event as one JSON object (what a search cluster indexes): payload fields less the `drop` paths,
        then decorations (and `_geo` from `_lat`/`_lon`), `_area` and `_t` (event time, epoch ms). The event
        itself is never changed: the paths are deleted from copies (see `delete_path`)."""
        doc = dict(self.fields)
        for path in drop:
            delete_path(doc, path)
        if self.decor:
            doc.update(self.decor)
            if self.decor.get("_lat") is not None:
                doc["_geo"] = {"lat": self.decor["_lat"], "lon": self.decor["_lon"]}
        doc["_area"] = self.area
        doc["_t"] = self.ts
        return doc


@dataclass(slots=True)
class DeadLetter:
    """A line that could not become (or stay) an event, with everything needed to find and replay it."""

    raw: str
    error: str
    source: str
    offset: int | None = None
    stage: str = "parse"
    detail: str | None = None
    category: str | None = None
    target: str | None = None  # where a sink failed to write it (an index name)

    LINE_STAGES = ("parse", "decorate")
    """Stages whose dead letters are lines that never became events; later stages' dead letters are events
    (already archived) that one sink could not take."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "raw": self.raw,
            "error": self.error,
            "detail": self.detail,
            "source": self.source,
            "offset": self.offset,
            "stage": self.stage,
            "category": self.category,
            "target": self.target,
        }


@dataclass(slots=True)
class LineBatch:
    """Consecutive raw lines of one source.

    `shard` names the piece of input the lines came from (a file's byte range, a spool segment); with `seq`,
    the batch's rank within that shard, it gives sinks stable, replay-safe file names. `category` is None
    when the source's name does not say it; `category_error` then says why. `watermark_ms` is the source's
    watermark when it read the lines (unbounded sources only): what the aggregating branches measure lateness
    against (transforms/lateness.py).
    """

    source: str
    shard: str
    seq: int
    category: str | None
    offsets: list[int]
    lines: list[bytes]
    category_error: str | None = None
    watermark_ms: int | None = None


@dataclass(slots=True)
class EventBatch:
    """The events parsed from one `LineBatch`, in input order. A route's batch carries the paths that route
    drops (`drop`), applied when a sink builds documents, so routing never copies events. `watermark_ms` is
    the line batch's (see LineBatch)."""

    source: str
    shard: str
    seq: int
    events: list[Event] = field(default_factory=list)
    drop: tuple[tuple[str, ...], ...] = ()
    watermark_ms: int | None = None


@dataclass(slots=True)
class ArchiveRows:
    """A LineBatch's events as the archive's Arrow rows (`table`: connectors.files.EVENT_SCHEMA), for jobs
    where nothing but the archive reads events (no decorations, no routes): parse builds the columns from its
    parsed lines and no `Event` object is made (docs/architecture.md, "The archive-only hot path")."""

    source: str
    shard: str
    seq: int
    category: str
    table: Any  # pyarrow.Table
    watermark_ms: int | None = None


class _Missing:
    """The absent value (JSON null is None). Pickles by name, so `is MISSING` holds in every worker."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self) -> str:
        return "MISSING"


MISSING = _Missing()


def get_path(fields: dict[str, Any], path: tuple[str, ...]) -> Any:
    """The value at a dotted path (as a tuple of keys), or MISSING."""
    node: Any = fields
    for part in path:
        if type(node) is not dict:
            return MISSING
        node = node.get(part, MISSING)
        if node is MISSING:
            return MISSING
    return node


def delete_path(fields: dict[str, Any], path: tuple[str, ...]) -> bool:
    """Delete `path` from `fields`, copying each nested object on the way instead of changing it in place,
    so objects shared with another event or branch stay intact. `fields` itself must be the caller's."""
    if get_path(fields, path) is MISSING:
        return False
    node = fields
    for part in path[:-1]:
        child = dict(node[part])
        node[part] = child
        node = child
    del node[path[-1]]
    return True


def decode_raw(raw: bytes) -> str:
    """Raw bytes as text for dead letters and logs: invalid UTF-8 is escaped (`\\xff`), never lost."""
    return raw.decode("utf-8", errors="backslashreplace")


GC_GEN0_THRESHOLD = 100_000


def tune_gc() -> None:
    """Let a batch's objects live without a collection every 700 allocations.

    A 4 MB batch retains ~70k small containers (events and their payload dicts), all acyclic and freed by
    reference counting; with the default threshold (700) the cyclic collector rescans them over and over and
    parsing costs 3x more (bench: 10 -> 3.5 us per line). Called from the hot DoFns' setup, once per worker.
    """
    if gc.get_threshold()[0] < GC_GEN0_THRESHOLD:
        gc.set_threshold(GC_GEN0_THRESHOLD, 50, 1000)


class BatchCoder(coders.Coder):
    """Pickles batches, but estimates their size without encoding them.

    Beam samples element sizes for its PCollection metrics by encoding elements; a 4 MB batch costs ~2 ms to
    pickle, and sampling took 15% of a backfill's time before this coder. Size = the raw bytes it carries.
    """

    def encode(self, value: Any) -> bytes:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded: bytes) -> Any:
        return pickle.loads(encoded)

    def is_deterministic(self) -> bool:
        return False

    def estimate_size(self, value: Any) -> int:
        if isinstance(value, LineBatch):
            return sum(map(len, value.lines)) + 16 * len(value.lines)
        if isinstance(value, EventBatch):
            return sum(len(e.raw) for e in value.events) * 2
        if isinstance(value, ArchiveRows):
            return value.table.nbytes
        return len(self.encode(value))


coders.registry.register_coder(LineBatch, BatchCoder)
coders.registry.register_coder(EventBatch, BatchCoder)
coders.registry.register_coder(ArchiveRows, BatchCoder)
