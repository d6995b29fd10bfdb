"""What the collector does to the lines it read, as pure functions: ignores, raw-to-ALS wrapping, long lines.

A block of complete lines from one file becomes `Run`s: contiguous byte ranges of that file, each either lines
to POST to the file's category or one cut long line, sent as a dead letter to the dead-letter category.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

import orjson

from connectors.collector.config import SourceConfig, TimeConfig

LONG_LINE = "line too long"


@dataclass(frozen=True)
class RawFormat:
    """How a plain application log line becomes ALS: `area,ms,{"host": ..., "msg": line}`."""

    area: bytes
    host: str
    time: TimeConfig | None

    def __post_init__(self) -> None:
        if self.time is not None:
            object.__setattr__(self, "_pattern", re.compile(self.time.pattern))
            object.__setattr__(self, "_zone", ZoneInfo(self.time.timezone))

    def wrap(self, line: bytes, now_ms: int) -> tuple[bytes, bool]:
        """The ALS line, and whether the time came from the line (False: it is the read time)."""
        text = line.removesuffix(b"\r").decode("utf-8", "replace")
        ms, parsed = now_ms, False
        if self.time is not None:
            found = self._pattern.search(text)  # type: ignore[attr-defined]
            if found:
                try:
                    stamp = datetime.strptime(found.group(1), self.time.format)
                    if stamp.tzinfo is None:
                        stamp = stamp.replace(tzinfo=self._zone)  # type: ignore[attr-defined]
                    ms, parsed = int(stamp.timestamp() * 1000), True
                except ValueError:
                    pass
        return b"%s,%d,%s" % (self.area, ms, orjson.dumps({"host": self.host, "msg": text})), parsed


@dataclass(frozen=True)
class LineRules:
    """A source's line handling: which lines to skip, how to reformat them, the longest line sent as is."""

    max_line_bytes: int
    ignore_prefixes: tuple[bytes, ...] = ()
    ignore_regexes: tuple[re.Pattern[bytes], ...] = ()
    raw: RawFormat | None = None

    @classmethod
    def of(cls, source: SourceConfig, host: str, max_line_bytes: int) -> LineRules:
        prefixes = tuple(i.encode() for i in source.ignore if not i.startswith("re:"))
        regexes = tuple(re.compile(i[3:].encode()) for i in source.ignore if i.startswith("re:"))
        raw = None
        if source.format == "raw":
            assert source.area is not None
            raw = RawFormat(source.area.encode(), host, source.time)
        return cls(max_line_bytes, prefixes, regexes, raw)

    @property
    def passthrough(self) -> bool:
        """True when lines go out byte for byte: the block itself is the body."""
        return self.raw is None and not self.ignore_prefixes and not self.ignore_regexes

    def ignored(self, line: bytes) -> bool:
        return line.startswith(self.ignore_prefixes) or any(r.search(line) for r in self.ignore_regexes)


@dataclass
class Counts:
    read: int = 0
    empty: int = 0
    ignored: int = 0
    cut: int = 0
    time_unparsed: int = 0


@dataclass
class Run:
    """Bytes [start, end) of a file: `body` (newline-terminated lines, `lines` of them) for the file's category,
    or, when `dead` is set, the first bytes of one long line (its length: end - start - 1)."""

    start: int
    end: int
    body: bytes
    lines: int
    dead: bool = False
    counts: Counts = field(default_factory=Counts)


def dead_letter(head: bytes, size: int, path: str, offset: int, category: str, host: str, now_ms: int) -> bytes:
    """The ALS line standing for a line longer than the limit: where it was, how long, its first bytes."""
    payload = {"reason": LONG_LINE, "host": host, "file": path, "offset": offset, "bytes": size,
               "category": category, "line": head.decode("utf-8", "replace")}
    return b"collector,%d,%s" % (now_ms, orjson.dumps(payload))


def split_block(block: bytes, start: int, rules: LineRules, now_ms: int | None = None) -> list[Run]:
    """Cut a block of complete lines (each ending in \\n, read at file offset `start`) into runs: lines that go
    out, and long lines (cut to the limit) that go out as dead letters. Empty and ignored lines are counted and
    skipped; their bytes stay in the runs' ranges, so the ranges tile the block."""
    lines = block.split(b"\n")
    lines.pop()  # after the last newline
    limit = rules.max_line_bytes
    if rules.passthrough and max(map(len, lines), default=0) <= limit:
        empty = lines.count(b"")
        return [Run(start, start + len(block), block, len(lines) - empty, counts=Counts(len(lines), empty))]
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    runs: list[Run] = []
    out: list[bytes] = []
    counts = Counts()
    run_start = offset = start
    for line in lines:
        size = len(line) + 1
        if len(line) > limit:
            if offset > run_start or out:
                runs.append(_lines_run(run_start, offset, out, counts))
            runs.append(Run(offset, offset + size, line[:limit], 1, dead=True, counts=Counts(read=1, cut=1)))
            out, counts = [], Counts()
            run_start = offset + size
            offset += size
            continue
        counts.read += 1
        if not line or line == b"\r":
            counts.empty += 1
        elif rules.ignored(line):
            counts.ignored += 1
        elif rules.raw is not None:
            wrapped, parsed = rules.raw.wrap(line, now_ms)
            out.append(wrapped)
            counts.time_unparsed += rules.raw.time is not None and not parsed
        else:
            out.append(line)
        offset += size
    if offset > run_start:
        runs.append(_lines_run(run_start, offset, out, counts))
    return runs


def _lines_run(start: int, end: int, out: list[bytes], counts: Counts) -> Run:
    return Run(start, end, b"\n".join([*out, b""]) if out else b"", len(out), counts=counts)
