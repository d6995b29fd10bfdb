"""ReadFromSpool: the unbounded source that tails the gateway's spool (connectors/spool.py) as LineBatches.

It is a Beam `UnboundedSource` (not a runner-specific trick), so the same code runs on Prism locally and on
Flink. One reader tails the segments in seq order: it reads the complete lines of the current segment, and
moves on only when that segment is sealed and fully read. A segment is found by its seq whatever its suffix,
so the gateway's `.open` -> `.seg` rename while it is being read loses nothing.

Position and deletion: the checkpoint mark is (seq, offset of the next line to emit), plus the watermark so a
reader rebuilt from it never goes back in event time. `finalize_checkpoint`, called once the runner has
durably committed a checkpoint, deletes the sealed segments wholly before that position: the only place
segments are deleted, so a crash replays from the last committed position and never loses a line.

Event time: a batch's timestamp is the latest event time among its lines, never below the watermark already
reported. The watermark is (latest event time seen) - `max_out_of_order_s`; when the spool is idle (nothing
new for two polls and no unread data) it follows the wall clock instead, so windows close when traffic stops.
Lines are read in acknowledgement order, and a segment of one category can be read up to the gateway's
`segment_seconds` after the lines of another: `max_out_of_order_s` should cover that plus the collectors'
delays, or those lines arrive late.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam import coders
from apache_beam.io.unbounded_source import (
    CheckpointMark,
    ReadFromUnboundedSource,
    UnboundedReader,
    UnboundedSource,
)
from apache_beam.metrics import Metrics
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Timestamp

from connectors.archives import STATS
from connectors.spool import NEXT_SEQ, SEALED, Segment, list_segments, read_lines, segment_dir
from transforms.als import parse_timestamp
from transforms.event import BatchCoder, LineBatch

log = logging.getLogger("dpipe.spool_source")

READ_BYTES = 4 << 20
"""Bytes of complete lines read from a segment at a time; the reader cuts them into batches."""
IDLE_POLLS = 2
"""Polls without new data (and none unread) after which the spool counts as idle for the watermark."""
GAP_GRACE_S = 1.0
"""How long a missing seq must stay missing, with later segments present, before the reader skips it. A seq
is skipped only when the writer crashed between taking it and creating its file; the grace keeps a directory
listing that missed a segment during its rename (readdir does not promise to see it) from skipping real data."""
BUNDLE_SECONDS = 1.0
"""A busy reader ends its bundle this often: the runner learns the watermark and finalizes (deletes) per bundle."""

_warned: set[str] = set()


def event_ms(line: bytes) -> int | None:
    """The ALS timestamp (second comma-separated field) in ms, or None when it does not parse."""
    first = line.find(b",")
    second = line.find(b",", first + 1) if first >= 0 else -1
    return parse_timestamp(line[first + 1:second]) if second >= 0 else None


def _ts(ms: int | None) -> Timestamp:
    return MIN_TIMESTAMP if ms is None else Timestamp(micros=ms * 1000)


class SpoolMark(CheckpointMark):
    """The next line to read: segment `seq` (None = the first one present) at byte `offset`; every line of the
    segments before `seq` has been read. Carries the watermark so a rebuilt reader never goes back."""

    def __init__(self, spool_dir: str, seq: int | None, offset: int, watermark_ms: int | None) -> None:
        self.spool_dir, self.seq, self.offset, self.watermark_ms = spool_dir, seq, offset, watermark_ms

    def finalize_checkpoint(self) -> None:
        """Delete the sealed segments before the position. Idempotent and cheap (one listing): FnApiRunner calls
        it in a busy loop, Prism once per bundle. Never deletes an `.open` segment."""
        if self.seq is None:
            return
        with contextlib.suppress(FileNotFoundError, ValueError):
            next_seq = int((segment_dir(self.spool_dir) / NEXT_SEQ).read_text())
            if next_seq < self.seq:  # a new spool under the old name: its segments were never read
                if self.spool_dir not in _warned:
                    _warned.add(self.spool_dir)
                    log.error("spool: %s restarted at seq %d behind the reader's position %d: deleting nothing",
                              self.spool_dir, next_seq, self.seq)
                return
        for segment in list_segments(self.spool_dir):
            if segment.seq >= self.seq:
                break
            if segment.sealed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(segment.path)
            elif str(segment.path) not in _warned:
                _warned.add(str(segment.path))
                log.error("spool: %s is open behind the reader's position (seq %d): its lines are not read",
                          segment.path, self.seq)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SpoolMark) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash((self.seq, self.offset))

    def __repr__(self) -> str:
        return f"SpoolMark(seq={self.seq}, offset={self.offset}, watermark_ms={self.watermark_ms})"


class SpoolReader(UnboundedReader):
    """Tails the spool from a mark; each record is one LineBatch. Never blocks: False = nothing new yet."""

    def __init__(self, source: SpoolSource, mark: SpoolMark | None) -> None:
        self._source = source
        self._ooo_ms = int(source.max_out_of_order_s * 1000)
        self._seq = mark.seq if mark else None
        self._offset = mark.offset if mark else 0  # the next line to emit
        self._read_to = self._offset  # the end of what is in the buffer
        self._watermark_ms = mark.watermark_ms if mark else None
        self._segment: Segment | None = None  # the segment `_seq`, once found
        self._buffer: list[tuple[int, bytes]] = []
        self._pos = 0
        self._gap: tuple[int, float] | None = None  # (missing seq, when first seen missing)
        self._last_data = time.monotonic()
        self._done = False
        self._current: LineBatch | None = None
        self._current_ts = MIN_TIMESTAMP

    # -- UnboundedReader --

    def start(self) -> bool:
        return self.advance()

    def advance(self) -> bool:
        if self._pos >= len(self._buffer) and not self._fill():
            self._on_no_data()
            return False
        take = self._buffer[self._pos:self._pos + self._source.batch_lines]
        self._pos += len(take)
        self._offset = self._buffer[self._pos][0] if self._pos < len(self._buffer) else self._read_to
        assert self._segment is not None
        name = self._segment.name
        lines = [line for _, line in take]
        self._current = LineBatch(name, name, take[0][0], self._segment.category, [o for o, _ in take], lines)
        self._current_ts = _ts(self._stamp(lines))
        self._last_data = time.monotonic()
        return True

    def get_current(self) -> LineBatch:
        assert self._current is not None
        return self._current

    def get_current_timestamp(self) -> Timestamp:
        return self._current_ts

    def get_watermark(self) -> Timestamp:
        return MAX_TIMESTAMP if self._done else _ts(self._watermark_ms)

    def get_checkpoint_mark(self) -> SpoolMark:
        return SpoolMark(self._source.spool_dir, self._seq, self._offset, self._watermark_ms)

    # -- event time --

    def _stamp(self, lines: list[bytes]) -> int:
        """The batch's timestamp (max event time, not below the watermark so far); then advance the watermark.
        Unparseable and implausibly future times (beyond now + max_future_s) move neither: one bad line must
        not push every later line behind the watermark."""
        limit = None
        if self._source.max_future_s is not None:
            limit = int((time.time() + self._source.max_future_s) * 1000)
        latest = None
        for line in lines:
            ms = event_ms(line)
            if ms is not None and (latest is None or ms > latest) and (limit is None or ms <= limit):
                latest = ms
        before = self._watermark_ms
        if latest is None:
            return before if before is not None else int(time.time() * 1000)
        self._advance_watermark(latest - self._ooo_ms)
        return latest if before is None else max(latest, before)

    def _advance_watermark(self, ms: int) -> None:
        if self._watermark_ms is None or ms > self._watermark_ms:
            self._watermark_ms = ms

    def _on_no_data(self) -> None:
        """Nothing to emit: when idle long enough with nothing unread, let the watermark follow the wall clock,
        and end the stream after `idle_stop_s` (tests, benchmarks)."""
        src = self._source
        idle_for = time.monotonic() - self._last_data
        stop = src.idle_stop_s is not None and idle_for >= src.idle_stop_s
        if idle_for < IDLE_POLLS * src.poll_interval_s and not stop:
            return
        if self._unread():
            return  # blocked behind an open segment while later ones have data: hold the watermark
        self._advance_watermark(int(time.time() * 1000) - self._ooo_ms)
        if stop:
            self._done = True

    def _unread(self) -> bool:
        """Whether a segment after the current one holds data (the current one was just read to its end)."""
        for segment in self._list():
            if self._seq is None or segment.seq > self._seq:
                with contextlib.suppress(FileNotFoundError):
                    if segment.path.stat().st_size > 0:
                        return True
        return False

    # -- tailing --

    def _list(self) -> list[Segment]:
        """Segments by seq, one per seq: a listing during a rename may return both names (sealed wins)."""
        by_seq: dict[int, Segment] = {}
        for segment in list_segments(self._source.spool_dir):
            if segment.seq not in by_seq or segment.sealed:
                by_seq[segment.seq] = segment
        return [by_seq[seq] for seq in sorted(by_seq)]

    def _fill(self) -> bool:
        """Refill the buffer with the next complete lines; False when there are none yet."""
        while True:
            segment = self._locate()
            if segment is None:
                return False
            try:
                lines, end = read_lines(segment.path, self._read_to, READ_BYTES)
            except FileNotFoundError:
                sealed = segment.path.with_suffix(SEALED)
                if segment.sealed or not sealed.exists():
                    self._segment = None  # gone from under us: list again at the next poll
                    return False
                self._segment = Segment(segment.seq, segment.category, sealed, True)  # renamed while open
                continue
            if lines:
                self._buffer, self._pos, self._read_to = lines, 0, end
                return True
            if not segment.sealed:
                sealed = segment.path.with_suffix(SEALED)
                if not sealed.exists():
                    return False  # open, all read: wait for more
                self._segment = Segment(segment.seq, segment.category, sealed, True)  # read on to its true end
                continue
            self._check_tail(segment)
            self._seq, self._offset, self._read_to, self._segment = segment.seq + 1, 0, 0, None

    def _locate(self) -> Segment | None:
        """The segment at the reader's position, listing the spool if needed; skips a missing seq only after
        GAP_GRACE_S (see there)."""
        if self._segment is not None:
            return self._segment
        segments = self._list()
        if self._seq is None:
            if not segments:
                return None
            self._seq = segments[0].seq
        ahead = [s for s in segments if s.seq >= self._seq]
        if not ahead:
            self._gap = None
            return None
        first = ahead[0]
        if first.seq != self._seq:
            now = time.monotonic()
            if self._gap is None or self._gap[0] != self._seq:
                self._gap = (self._seq, now)
                return None
            if now - self._gap[1] < GAP_GRACE_S:
                return None
            log.warning("spool: segments %d..%d do not exist: skipped", self._seq, first.seq - 1)
            self._seq, self._offset, self._read_to = first.seq, 0, 0
        self._gap = None
        self._segment = first
        return first

    def _check_tail(self, segment: Segment) -> None:
        with contextlib.suppress(FileNotFoundError):
            size = segment.path.stat().st_size
            if size > self._read_to:
                log.warning("spool: %s ends with %d bytes without a newline: not read", segment.path,
                            size - self._read_to)


class SpoolSource(UnboundedSource):
    """The spool as one unsplit source: every category is in one seq order, which one reader keeps."""

    def __init__(self, spool_dir: str, batch_lines: int = 2000, max_out_of_order_s: float = 5.0,
                 poll_interval_s: float = 0.2, idle_stop_s: float | None = None,
                 max_future_s: float | None = 300.0) -> None:
        if batch_lines < 1:
            raise ValueError(f"batch_lines must be >= 1, got {batch_lines}")
        self.spool_dir = str(spool_dir)
        self.batch_lines = batch_lines
        self.max_out_of_order_s = max_out_of_order_s
        self.poll_interval_s = poll_interval_s
        self.idle_stop_s = idle_stop_s
        self.max_future_s = max_future_s

    def split(self, desired_num_splits: int, options: Any = None) -> list[SpoolSource]:
        return [self]

    def create_reader(self, options: Any, checkpoint_mark: SpoolMark | None) -> SpoolReader:
        return SpoolReader(self, checkpoint_mark)

    def get_checkpoint_mark_coder(self) -> coders.Coder:
        return coders.PickleCoder()

    def default_output_coder(self) -> coders.Coder:
        return BatchCoder()


class _StatsDoFn(beam.DoFn):
    """Passes batches on and counts them, in the shape of ReadArchives' `stats` output (per batch here)."""

    def __init__(self) -> None:
        self._lines = Metrics.counter("dpipe.read", "lines_read")
        self._bytes = Metrics.counter("dpipe.read", "bytes_read")

    def process(self, batch: LineBatch) -> Iterator[LineBatch | beam.pvalue.TaggedOutput]:
        n = len(batch.lines)
        nbytes = sum(map(len, batch.lines)) + n
        self._lines.inc(n)
        self._bytes.inc(nbytes)
        yield batch
        yield beam.pvalue.TaggedOutput(STATS, {"lines_read": n, "bytes_read": nbytes, "files_read": 0})


class ReadFromSpool(beam.PTransform):
    """Spool dir -> LineBatch (main output `lines`, timestamped with event time) and read statistics (`stats`),
    like ReadArchives, so one pipeline graph takes either source.

    `idle_stop_s` (tests, benchmarks): end the stream once nothing new has come for that long and nothing is
    left unread; None = run forever. `max_future_s`: event times further ahead of the wall clock move neither
    the watermark nor a batch's timestamp (None = trust them all).
    """

    def __init__(self, spool_dir: str, batch_lines: int = 2000, max_out_of_order_s: float = 5.0,
                 poll_interval_s: float = 0.2, idle_stop_s: float | None = None,
                 max_future_s: float | None = 300.0) -> None:
        super().__init__()
        self._source = SpoolSource(spool_dir, batch_lines, max_out_of_order_s, poll_interval_s, idle_stop_s,
                                   max_future_s)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.pvalue.DoOutputsTuple:
        return (
            pbegin
            | "Tail" >> ReadFromUnboundedSource(self._source, poll_interval=self._source.poll_interval_s,
                                                max_read_time_seconds=BUNDLE_SECONDS)
            | "Stats" >> beam.ParDo(_StatsDoFn()).with_output_types(LineBatch).with_outputs(STATS, main="lines")
        )
