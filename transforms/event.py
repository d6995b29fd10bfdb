"""The event model: what flows between dpipe's transforms.

The bounded hot path carries *batches* (DESIGN §9): a `LineBatch` of raw lines from one source becomes an
`EventBatch` plus individual `DeadLetter`s. Per-event work is a loop inside one DoFn call, so Beam's
per-element cost is paid once per batch, not once per line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Event:
    """One parsed ALS line.

    `ts` is milliseconds since the epoch (UTC): second-resolution lines are scaled up, millisecond lines keep
    their precision. `raw` is the line as read (without its end of line), kept for dead letters, document ids
    and replays; `payload` is its JSON text, which the archive stores unchanged.
    """

    area: str
    ts: int
    category: str
    fields: dict[str, Any]
    source: str
    offset: int
    raw: bytes
    payload: bytes


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

    def to_dict(self) -> dict[str, Any]:
        return {
            "raw": self.raw,
            "error": self.error,
            "detail": self.detail,
            "source": self.source,
            "offset": self.offset,
            "stage": self.stage,
            "category": self.category,
        }


@dataclass(slots=True)
class LineBatch:
    """Consecutive raw lines of one source.

    `shard` names the piece of input the lines came from (a file's byte range, a spool segment); with `seq`,
    the batch's rank within that shard, it gives sinks stable, replay-safe file names. `category` is None
    when the source's name does not say it; `category_error` then says why.
    """

    source: str
    shard: str
    seq: int
    category: str | None
    offsets: list[int]
    lines: list[bytes]
    category_error: str | None = None


@dataclass(slots=True)
class EventBatch:
    """The events parsed from one `LineBatch`, in input order."""

    source: str
    shard: str
    seq: int
    events: list[Event] = field(default_factory=list)


def decode_raw(raw: bytes) -> str:
    """Raw bytes as text for dead letters and logs: invalid UTF-8 is escaped (`\\xff`), never lost."""
    return raw.decode("utf-8", errors="backslashreplace")
