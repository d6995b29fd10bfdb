"""Batches: contiguous byte ranges of one file, one POST each, acknowledged in file order.

A file has at most one open batch; it is sealed when it reaches `batch.lines` or `batch.bytes`, when it is
`batch.linger` old, or before a long line (which goes alone to the dead-letter category). A sealed batch joins
its file's `outstanding` list; the file's acknowledged offset (what the checkpoint stores) moves past a batch
only once it and every batch before it got a 200. A batch's Idempotency-Key is `{file id}:{start}-{end}`: the
same bytes of the same file always give the same key, across retries and restarts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from connectors.collector.config import BatchConfig
from connectors.collector.lines import Counts, LineRules, Run, dead_letter, split_block
from connectors.collector.metrics import Metrics
from connectors.collector.tailer import Block, TailedFile


@dataclass(eq=False)
class Batch:
    file: TailedFile
    generation: int
    file_id: str
    category: str
    start: int
    end: int
    created: float
    parts: list[bytes] = field(default_factory=list)
    lines: int = 0
    size: int = 0
    replayed: bool = False
    registered: bool = False  # recorded as sent in a checkpoint before its first POST
    done: bool = False
    attempts: int = 0

    @property
    def key(self) -> str:
        """The Idempotency-Key: stable for these bytes of this file, whatever happens to the collector."""
        return f"{self.file_id}:{self.start}-{self.end}"

    @property
    def source(self) -> int:
        return self.file.source

    def body(self) -> bytes:
        return self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)


class Batcher:
    """Turns blocks read from files into sealed batches, handed to `ship`; tracks acknowledgements."""

    def __init__(self, settings: BatchConfig, rules: list[LineRules], dead_letter_category: str, host: str,
                 metrics: Metrics, ship: Callable[[Batch], None]) -> None:
        self.settings = settings
        self.rules = rules
        self.dead_letter_category = dead_letter_category
        self.host = host
        self.metrics = metrics
        self.ship = ship
        self.open: dict[tuple[int, int], Batch] = {}
        self.buffered = 0  # body bytes of open and outstanding batches

    def room(self, file: TailedFile) -> tuple[int, int]:
        """How many more bytes and lines the file's open batch takes."""
        batch = self.open.get(file.key)
        if batch is None:
            return self.settings.bytes, self.settings.lines
        return max(1, self.settings.bytes - batch.size), max(1, self.settings.lines - batch.lines)

    def add(self, file: TailedFile, block: Block, now: float, replayed: bool = False) -> None:
        """Put what was read into batches. A `replayed` block is one range of a previous run's checkpoint:
        it becomes exactly one batch, with the same range and key as before."""
        rules = self.rules[file.source]
        if block.long is not None:
            long = block.long
            runs = [Run(long.start, block.end, long.head, 1, dead=True, counts=Counts(read=1, cut=1))]
        else:
            runs = split_block(block.data, block.start, rules)
            runs[-1].end = block.end  # a flushed partial line: the newline was added, not read
        for run in runs:
            self.metrics.count_read(file.source, run.counts)
            if replayed:
                self.metrics.inc("lines_replayed_total", run.lines, source=self.metrics.sources[file.source])
            if run.dead:
                self.seal(file)
                body = dead_letter(run.body, run.end - run.start - 1, file.path, run.start, file.category, self.host,
                                   int(time.time() * 1000))
                batch = self._new(file, self.dead_letter_category, run.start, now)
                batch.replayed = replayed
                self._append(batch, run.end, body + b"\n", 1)
                self._seal(batch)
                continue
            batch = self.open.get(file.key)
            if batch is None or replayed:
                batch = self.open[file.key] = self._new(file, file.category, run.start, now)
                batch.replayed = replayed
            self._append(batch, run.end, run.body, run.lines)
            if replayed or batch.size >= self.settings.bytes or batch.lines >= self.settings.lines:
                self.seal(file)

    def skip(self, file: TailedFile, start: int, end: int, now: float) -> None:
        """A range a previous run had acknowledged already: accounted, not sent again."""
        batch = self._new(file, file.category, start, now)
        batch.end = end
        self._seal(batch)

    def seal(self, file: TailedFile) -> None:
        batch = self.open.pop(file.key, None)
        if batch is not None:
            self._seal(batch)

    def seal_due(self, now: float) -> None:
        """Seal the batches older than `linger`."""
        for batch in [b for b in self.open.values() if now - b.created >= self.settings.linger]:
            self.seal(batch.file)

    def seal_all(self) -> None:
        for batch in list(self.open.values()):
            self.seal(batch.file)

    def acknowledge(self, batch: Batch) -> None:
        """The gateway took the batch (or it had nothing to send): move the file's acknowledged offset."""
        batch.done = True
        self.buffered -= batch.size
        batch.parts = []
        file = batch.file
        if batch.generation != file.generation:
            return  # the file was truncated since: its offsets start again from 0
        while file.outstanding and file.outstanding[0].done:
            file.acked = file.outstanding.popleft().end

    def _new(self, file: TailedFile, category: str, start: int, now: float) -> Batch:
        return Batch(file, file.generation, file.id, category, start, start, now)

    def _append(self, batch: Batch, end: int, body: bytes, lines: int) -> None:
        batch.end = end
        if body:
            batch.parts.append(body)
            batch.size += len(body)
            self.buffered += len(body)
        batch.lines += lines

    def _seal(self, batch: Batch) -> None:
        if batch.generation == batch.file.generation:  # else: read before a truncation, sent all the same
            batch.file.outstanding.append(batch)
        if batch.lines:
            self.ship(batch)
        else:  # only empty or ignored lines: nothing to send, but the offset moves on in order
            self.acknowledge(batch)
