"""ReadFromSpool: the unbounded source that tails the gateway's spool (connectors/gateway/spool.py) as LineBatches.

It is a Beam `UnboundedSource` (not a runner-specific trick), so the same code runs on Prism locally and on
Flink. The reader keeps one cursor per category (an *input*: the spool cannot tell collectors apart, but it
keeps each category's segments in order): it reads each category's segments in seq order, and always emits
next from the input that is furthest behind in event time, so a backlog is caught up in event-time order.

Position and deletion: the checkpoint mark is each input's (seq, offset of the next line to emit) and its
latest event time, plus the watermark, so a reader rebuilt from it never goes back in event time.

Exactly-once across a crash (docs/architecture.md, "Guarantees"): a batch is a *cut* of one segment, [start,
end) in bytes, decided by the reader and recorded in `DIR/reader/cuts` before the batch is handed out, so a
re-read after a crash cuts the same batches again (segments only grow, and a sealed one never changes), and
the sinks, which name their files after the cut, replace what they wrote instead of adding to it. The
journal also keeps the watermark each cut was read under: a re-read cut goes out under it again (at least
under the replay watermark), so each branch counts the same lines of it as the first time. A crash
loses the runner's windows (Prism keeps no state), so the mark also carries the *replay point*: per input,
the first segment some window that is not final yet still needs (its latest event time + `replay_span_s`,
the longest window plus its lateness, is after the *replay watermark*: the watermark as it stood
`publish_margin_s` of processing time ago, by when every final window's last pane was published), and that
watermark. `finalize_checkpoint`, called once the runner has committed a checkpoint, first records both in
`DIR/reader/replay.json`, then deletes the sealed segments wholly before the replay point: the only place
segments are deleted. A reader started after a crash begins at the replay point under the replay watermark:
the windows still open get every line again, lines of windows already final are left out as late (their
published rows stand), and the archive rewrites the same files. `replay_bytes` bounds what is kept for that.

Event time (docs/architecture.md, "Event time"): an input's own watermark is its latest event time less
`max_out_of_order_s`; the source's watermark is the *slowest active input's*. An input is active while it has
unread data or has delivered within `idle_timeout_s`; an idle input stops holding the watermark. When every
input is idle, event time goes on at the wall clock's pace from the latest line, so windows close when
traffic stops, while a replay of old archives is not pushed behind the watermark. Each batch carries the
watermark it was read under (`LineBatch.watermark_ms`): the aggregating branches count a line later than
their allowed lateness against it.

A clean stop (`request_drain`): the reader stops at a batch boundary, records its positions in
`DIR/reader/drained.json` and ends (watermark at infinity), so the runner finishes every bundle in flight;
the stream then commits them (`commit_drain`: the positions replace the replay point) and the next reader
starts exactly there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apache_beam as beam
import orjson
from apache_beam import coders
from apache_beam.io.unbounded_source import (
    CheckpointMark,
    ReadFromUnboundedSource,
    UnboundedReader,
    UnboundedSource,
)
from apache_beam.metrics import Metrics
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Timestamp

from connectors import beam_fixes  # noqa: F401  (installs its guard in every worker that runs this read)
from connectors.archives import STATS
from connectors.gateway.spool import NEXT_SEQ, SEGMENTS, Segment, list_segments
from connectors.spool_store import Journal, SpoolStore, open_store
from transforms.als import parse_timestamp
from transforms.event import BatchCoder, LineBatch

log = logging.getLogger("dpipe.spool_source")

READ_BYTES = 1 << 20
"""Bytes of complete lines read from one input's segment at a time; the reader cuts them into batches."""
BATCH_LINES = 16000
"""Most lines per batch (a batch is also at most one read, READ_BYTES). Only a backlog fills a batch: a reader
that keeps up hands out what has come since its last poll. Big batches pay the per-batch costs (a Parquet file
per cut, a bundle's element through ~30 fused transforms, one partial per key and fold) over more lines: the
engine template's maximum sustainable rate went from 37,000 lines/s at 2,000 to 60,000 (README)."""
IDLE_POLLS = 2
"""Polls without new data (and none unread) after which the spool counts as idle (idle_stop, the idle clock)."""
GAP_GRACE_S = 1.0
"""How long a seq never seen in any listing must stay missing before an input's cursor jumps over it. A seq is
missing for good only when the writer crashed between taking it and creating its file; the grace keeps a
listing that missed a segment during its rename (readdir does not promise to see it) from skipping data."""
BUNDLE_SECONDS = 1.0
"""A busy reader ends its bundle this often: the runner learns the watermark and finalizes (deletes) per bundle."""
DRAIN = "drain"
"""`DIR/drain`: asks the reader to stop at the next batch boundary (a clean stop)."""
READER_DIR = "reader"
DRAINED, POSITIONS, REPLAY, CUTS = "drained.json", "positions.json", "replay.json", "cuts"
PUBLISH_MARGIN_S = 60.0
"""Processing time by which a window that the watermark made final has published its last pane (results p99
is seconds: README, stream benchmark): the replay watermark lags the watermark by this much."""
PERSIST_SECONDS = 1.0
"""`replay.json` is rewritten at most this often while the replay point stays put (FnApiRunner finalizes in a
busy loop)."""

_warned: set[str] = set()
_now = time.time
"""The processing-time clock of idleness, gaps and the replay watermark (a test may replace it). The wall
clock, not a monotonic one: its readings travel in the checkpoint mark, to a reader rebuilt in another
process or on another machine."""


def event_ms(line: bytes) -> int | None:
    """The ALS timestamp (second comma-separated field) in ms, or None when it does not parse."""
    first = line.find(b",")
    second = line.find(b",", first + 1) if first >= 0 else -1
    return parse_timestamp(line[first + 1:second]) if second >= 0 else None


def _ts(ms: int | None) -> Timestamp:
    return MIN_TIMESTAMP if ms is None else Timestamp(micros=ms * 1000)


Positions = dict[str, tuple[int | None, int]]
"""category -> (seq of its current segment, None = its first one present; offset of the next line)."""


def _reader_file(name: str) -> str:
    return f"{READER_DIR}/{name}"


def request_drain(spool: str | Path) -> None:
    """Ask the spool's reader to stop cleanly (see the module docstring). `spool`: a path or a URL."""
    open_store(spool).write_atomic(DRAIN, b"")


def drained(spool: str | Path) -> bool:
    """Whether the reader has stopped at a recorded position after `request_drain`."""
    return open_store(spool).exists(_reader_file(DRAINED))


def commit_drain(spool: str | Path) -> None:
    """After the job finished every bundle: the drained position becomes where the next reader starts (every
    window was flushed at the end, so there is nothing to replay)."""
    store = open_store(spool)
    with contextlib.suppress(FileNotFoundError):
        store.replace(_reader_file(DRAINED), _reader_file(POSITIONS))
        store.delete(_reader_file(REPLAY))
    store.delete(DRAIN)


def reset_drain(spool: str | Path) -> None:
    """Before a start: a stop request or drained position left by a run that did not finish cleanly is void."""
    store = open_store(spool)
    for name in (DRAIN, _reader_file(DRAINED)):
        store.delete(name)


def _saved(store: SpoolStore, name: str) -> Any:
    """A reader file's JSON, or None when it is missing or torn."""
    try:
        return orjson.loads(store.read(_reader_file(name)))
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None


def _saved_positions(store: SpoolStore) -> Positions:
    saved = _saved(store, POSITIONS)
    return {c: (p[0], p[1]) for c, p in saved.items()} if saved else {}


def _saved_replay(store: SpoolStore) -> tuple[Positions, int | None] | None:
    """The replay point and watermark a crashed run left (None after a clean stop or on a new spool)."""
    saved = _saved(store, REPLAY)
    if saved is None:
        return None
    return {c: (p[0], p[1]) for c, p in saved["from"].items()}, saved["watermark_ms"]


_persisted: dict[str, tuple[float, bytes, Positions]] = {}
"""spool dir -> (when, what) `replay.json` was last written by this process, and the replay point it holds."""


@dataclass
class _Read:
    """What the reader knows of a segment it has read from: its input, latest plausible event time, bytes."""

    category: str
    latest_ms: int | None = None
    end: int = 0


@dataclass
class _Clocks:
    """The reader's processing-time state, carried in the mark. Beam rebuilds a reader from its mark whenever
    its reader cache misses (on Prism every few seconds); without these the replay watermark, the idle
    timeouts and the floor of a run after a crash would start over with each rebuild and never be reached."""

    history: list[tuple[float, int | None]]  # (when, watermark) since publish_margin_s ago
    floor_ms: int | None  # the replay watermark a crashed run restarted under
    last_data: float  # when any input last delivered
    inputs: dict[str, float]  # per input: when it last delivered


class SpoolMark(CheckpointMark):
    """Where every input stands: `positions` (see Positions; every line of an input's earlier segments has
    been read), each input's latest event time, and the watermark, so a rebuilt reader never goes back;
    `replay` and `replay_watermark_ms` (module docstring; None: delete up to the positions), and what the
    reader knows of the segments it keeps (`segments`: seq -> _Read), so a rebuilt reader goes on keeping
    them, and its processing-time state (`clocks`)."""

    def __init__(self, spool_dir: str, positions: Positions, latest: dict[str, int],
                 watermark_ms: int | None, replay: Positions | None = None,
                 replay_watermark_ms: int | None = None, segments: dict[int, _Read] | None = None,
                 clocks: _Clocks | None = None) -> None:
        self.spool_dir, self.positions, self.latest, self.watermark_ms = spool_dir, positions, latest, watermark_ms
        self.replay, self.replay_watermark_ms, self.segments = replay, replay_watermark_ms, segments or {}
        self.clocks = clocks

    def finalize_checkpoint(self) -> None:
        """Record the replay point, then delete the sealed segments before it (before the positions without
        one). Idempotent and cheap (one listing): FnApiRunner calls it in a busy loop, Prism once per bundle.
        Never deletes an `.open` segment."""
        store = open_store(self.spool_dir)
        upto = self.positions if self.replay is None else self._persist(store)
        seqs = [seq for seq, _ in upto.values() if seq is not None]
        if not seqs:
            return
        with contextlib.suppress(FileNotFoundError, ValueError):  # at a URL there is none: the gateway keeps it
            next_seq = int(store.read(f"{SEGMENTS}/{NEXT_SEQ}").decode())
            if next_seq < max(seqs):  # a new spool under the old name: its segments were never read
                if self.spool_dir not in _warned:
                    _warned.add(self.spool_dir)
                    log.error("spool: %s restarted at seq %d behind the reader's position %d: deleting nothing",
                              self.spool_dir, next_seq, max(seqs))
                return
        for segment in store.segments():
            at = upto.get(segment.category, (None, 0))[0]
            if at is None or segment.seq >= at:
                continue
            if segment.sealed:
                store.delete_segment(segment)
            elif store.where(segment) not in _warned:
                _warned.add(store.where(segment))
                log.error("spool: %s is open behind the reader's position (seq %d): its lines are not read",
                          store.where(segment), at)

    def _persist(self, store: SpoolStore) -> Positions:
        """Write `replay.json` (when its replay point moved, or its watermark PERSIST_SECONDS after the last
        write) and return the replay point on disk: deleting up to it is safe whatever happens next."""
        assert self.replay is not None
        data = orjson.dumps({"from": {c: list(p) for c, p in sorted(self.replay.items())},
                             "watermark_ms": self.replay_watermark_ms})
        when, last, on_disk = _persisted.get(self.spool_dir, (0.0, b"", {}))
        now = _now()
        if data != last and (self.replay != on_disk or now - when >= PERSIST_SECONDS):
            store.write_atomic(_reader_file(REPLAY), data)
            _persisted[self.spool_dir] = (now, data, dict(self.replay))
            return self.replay
        return on_disk

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SpoolMark) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.positions.items())))

    def __repr__(self) -> str:
        return f"SpoolMark({self.positions}, watermark_ms={self.watermark_ms})"


def _parse_cuts(data: bytes) -> Iterator[tuple[str, int, int, int, int | None]]:
    """(category, seq, start, end, watermark or None) per complete line of a cuts journal."""
    for line in data.splitlines():
        parts = line.split()
        if len(parts) == 5:  # a line cut short by a crash was never followed by its batch
            ms = int(parts[4])
            yield parts[0].decode(), int(parts[1]), int(parts[2]), int(parts[3]), None if ms < 0 else ms


def unread_bytes(spool_dir: str | Path) -> int:
    """Bytes of a local spool's segments that no reader has cut into a batch yet: how far the stream is
    behind the gateway. The spool's size is not that: it also holds read segments kept for a replay after a
    crash (up to `replay_bytes`)."""
    read_to: dict[int, int] = {}
    with contextlib.suppress(FileNotFoundError):
        for _, seq, _, end, _ in _parse_cuts((Path(spool_dir) / _reader_file(CUTS)).read_bytes()):
            read_to[seq] = max(read_to.get(seq, 0), end)
    total = 0
    for segment in list_segments(spool_dir):
        with contextlib.suppress(FileNotFoundError):
            total += max(0, segment.path.stat().st_size - read_to.get(segment.seq, 0))
    return total


class _Cuts:
    """The journal of cuts (`DIR/reader/cuts`, one `category seq start end watermark` line per batch handed
    out): the batch boundaries a re-read must repeat, and the watermark the batch was read under (-1: none),
    so that a re-read batch gets the lateness verdict it got before (SpoolReader._replayed). Appended before
    a batch is handed out (a kill -9 keeps what was written; it is fsynced once per checkpoint); rewritten
    without the segments before the replay point."""

    def __init__(self, store: SpoolStore) -> None:
        self.journal: Journal = store.journal(_reader_file(CUTS))
        self.by_seq: dict[int, dict[int, tuple[int, int | None]]] = {}  # seq -> start -> (end, watermark)
        self.category: dict[int, str] = {}
        for cut in _parse_cuts(self.journal.read()):
            self._add(*cut)

    def _add(self, category: str, seq: int, start: int, end: int, watermark_ms: int | None) -> None:
        self.by_seq.setdefault(seq, {})[start] = (end, watermark_ms)
        self.category[seq] = category

    def get(self, seq: int, start: int) -> tuple[int, int | None] | None:
        """(end, watermark) of the cut starting at `start`, if a reader handed one out before."""
        cuts = self.by_seq.get(seq)
        return cuts.get(start) if cuts else None

    def next_start(self, seq: int, start: int) -> int | None:
        """The first recorded cut after `start`: a new cut must stop there so that cuts never overlap."""
        cuts = self.by_seq.get(seq)
        return min((s for s in cuts if s > start), default=None) if cuts else None

    def record(self, category: str, seq: int, start: int, end: int, watermark_ms: int | None) -> None:
        self.journal.append(self._line(category, seq, start, end, watermark_ms))
        self._add(category, seq, start, end, watermark_ms)

    @staticmethod
    def _line(category: str, seq: int, start: int, end: int, watermark_ms: int | None) -> bytes:
        return b"%s %d %d %d %d\n" % (category.encode(), seq, start, end, -1 if watermark_ms is None else watermark_ms)

    def sync(self) -> None:
        self.journal.sync()

    def compact(self, replay: Positions) -> None:
        """Forget the segments before their input's replay point (deleted, or about to be), when they are
        at least half of the journal."""
        gone = [seq for seq, c in self.category.items() if (at := replay.get(c, (None, 0))[0]) is not None
                and seq < at]
        if not gone or 2 * len(gone) < len(self.by_seq):
            return
        for seq in gone:
            del self.by_seq[seq], self.category[seq]
        lines = b"".join(self._line(self.category[seq], seq, start, *cut)
                         for seq in sorted(self.by_seq) for start, cut in sorted(self.by_seq[seq].items()))
        self.journal.rewrite(lines)

    def close(self) -> None:
        self.journal.close()


@dataclass
class _Input:
    """One category's cursor: its current segment, what is buffered of it, and its event-time progress."""

    category: str
    seq: int | None
    offset: int  # the next line to emit
    latest_ms: int | None = None  # latest plausible event time read
    last_data: float = field(default_factory=lambda: _now())
    segment: Segment | None = None
    read_to: int = 0  # the end of what is in the buffer
    buffer: list[tuple[int, bytes]] = field(default_factory=list)
    pos: int = 0
    behind: bool = True  # unread data may remain (cleared when a fill finds nothing more)
    gap: tuple[int, float] | None = None  # (the seq jumped to, when the jump was first wanted)

    def __post_init__(self) -> None:
        self.read_to = self.offset

    @property
    def buffered(self) -> bool:
        return self.pos < len(self.buffer)


class SpoolReader(UnboundedReader):
    """Tails the spool from a mark; each record is one LineBatch. Never blocks: False = nothing new yet."""

    def __init__(self, source: SpoolSource, mark: SpoolMark | None) -> None:
        self._source = source
        self._store = open_store(source.spool_dir)
        self._ooo_ms = int(source.max_out_of_order_s * 1000)
        crashed = None if mark else _saved_replay(self._store)
        if mark:
            positions, watermark, replay_watermark = mark.positions, mark.watermark_ms, mark.replay_watermark_ms
        elif crashed:  # the last run did not stop cleanly: replay what its open windows need (module docstring)
            positions, watermark = crashed
            replay_watermark = watermark
            log.info("spool: the last run did not stop cleanly: reading again from %s under watermark %s",
                     positions, watermark)
        else:
            positions, watermark, replay_watermark = _saved_positions(self._store), None, None
        latest = mark.latest if mark else {}
        self._inputs: dict[str, _Input] = {
            c: _Input(c, seq, offset, latest.get(c)) for c, (seq, offset) in positions.items()}
        self._watermark_ms = watermark
        self._replay_watermark_ms = replay_watermark
        clocks = mark.clocks if mark else None
        self._floor_ms = clocks.floor_ms if clocks else watermark if crashed else None
        self._history: deque[tuple[float, int | None]] = deque(clocks.history if clocks else ())
        self._read: dict[int, _Read] = dict(mark.segments) if mark else {}
        self._cuts = _Cuts(self._store)
        self._warned_budget = False
        self._known: set[int] = set()  # seqs seen in a listing (for GAP_GRACE_S)
        self._last_data = clocks.last_data if clocks else _now()
        if clocks:
            for c, when in clocks.inputs.items():
                if c in self._inputs:
                    self._inputs[c].last_data = when
        self._last_event_ms: int | None = max(latest.values(), default=None)
        self._done = False
        self._current: LineBatch | None = None
        self._current_ts = MIN_TIMESTAMP

    # -- UnboundedReader --

    def start(self) -> bool:
        return self.advance()

    def advance(self) -> bool:
        if self._done:
            return False
        if self._drain_requested():  # buffered lines were not handed out: the position excludes them
            self._finish_drain()
            return False
        ready = [i for i in self._inputs.values() if i.buffered]
        if not ready:
            self._fill()
            ready = [i for i in self._inputs.values() if i.buffered]
            if not ready:
                self._on_no_data()
                return False
        source = min(ready, key=lambda i: -(2**62) if i.latest_ms is None else i.latest_ms)
        self._emit(source)
        return True

    def get_current(self) -> LineBatch:
        assert self._current is not None
        return self._current

    def get_current_timestamp(self) -> Timestamp:
        return self._current_ts

    def get_watermark(self) -> Timestamp:
        return MAX_TIMESTAMP if self._done else _ts(self._watermark_ms)

    def get_checkpoint_mark(self) -> SpoolMark:
        self._cuts.sync()
        replay = self._replay_point()
        self._cuts.compact(replay)
        return SpoolMark(self._source.spool_dir, self._positions(),
                         {c: i.latest_ms for c, i in self._inputs.items() if i.latest_ms is not None},
                         self._watermark_ms, replay, self._replay_watermark_ms,
                         {seq: dataclasses.replace(r) for seq, r in self._read.items()},
                         _Clocks(list(self._history), self._floor_ms, self._last_data,
                                 {c: i.last_data for c, i in self._inputs.items()}))

    def close(self) -> None:
        self._cuts.close()

    def _positions(self) -> Positions:
        return {c: (i.seq, i.offset) for c, i in self._inputs.items()}

    # -- the replay point (module docstring) --

    def _replay_point(self) -> Positions:
        """Per input, where a run after a crash must start: the first segment kept for a window that is not
        final under the replay watermark (from its start), else the position. Forgets segments before it."""
        self._move_replay_watermark()
        mark, span = self._replay_watermark_ms, int(self._source.replay_span_s * 1000)
        needed = sorted(seq for seq, r in self._read.items() if span > 0 and r.latest_ms is not None and (
            mark is None or r.latest_ms + span > mark))
        kept, total = set(), 0
        for seq in reversed(needed):  # newest first, within the budget
            total += self._read[seq].end
            if total > self._source.replay_bytes:
                if not self._warned_budget:
                    self._warned_budget = True
                    log.warning("spool: keeping segments for the replay after a crash would pass replay_bytes "
                                "(%d): windows older than segment %d may be partial after a crash",
                                self._source.replay_bytes, seq)
                break
            kept.add(seq)
        replay: Positions = {}
        for c, i in self._inputs.items():
            first = min((seq for seq in kept if self._read[seq].category == c), default=None)
            replay[c] = (first, 0) if first is not None and (i.seq is None or first <= i.seq) else (i.seq, i.offset)
        for seq in [seq for seq, r in self._read.items() if (at := replay.get(r.category, (None, 0))[0]) is not None
                    and seq < at]:
            del self._read[seq]
        return replay

    def _move_replay_watermark(self) -> None:
        """The watermark as it stood PUBLISH_MARGIN_S ago (never going back)."""
        now = _now()
        if not self._history or self._history[-1][1] != self._watermark_ms:
            self._history.append((now, self._watermark_ms))
        margin = self._source.publish_margin_s
        while len(self._history) > 1 and self._history[1][0] <= now - margin:
            self._history.popleft()
        when, ms = self._history[0]
        if when <= now - margin and ms is not None and (
                self._replay_watermark_ms is None or ms > self._replay_watermark_ms):
            self._replay_watermark_ms = ms

    # -- emitting and event time --

    def _emit(self, source: _Input) -> None:
        assert source.segment is not None and source.seq is not None
        seq, start = source.seq, source.buffer[source.pos][0]
        watermark = self._watermark_ms
        recorded = self._cuts.get(seq, start)
        end = None
        if recorded is not None:  # handed out before: the same cut again, with the lateness verdict it had
            end, before = recorded
            watermark = self._replayed(before)
            self._extend(source, end)
            stop: int | None = end
        else:
            stop = self._cuts.next_start(seq, start)
        n = 0
        for offset, _ in source.buffer[source.pos:]:
            if (stop is not None and offset >= stop) or (end is None and n == self._source.batch_lines):
                break
            n += 1
        take = source.buffer[source.pos:source.pos + n]
        source.pos += n
        source.offset = source.buffer[source.pos][0] if source.buffered else source.read_to
        if end is None:
            self._cuts.record(source.category, seq, start, source.offset, watermark)
        name = source.segment.name
        lines = [line for _, line in take]
        latest = self._latest(lines)
        if latest is not None and (source.latest_ms is None or latest > source.latest_ms):
            source.latest_ms = latest
        if latest is not None and (self._last_event_ms is None or latest > self._last_event_ms):
            self._last_event_ms = latest
        read = self._read.setdefault(seq, _Read(source.category))
        read.end = max(read.end, source.offset)
        if latest is not None and (read.latest_ms is None or latest > read.latest_ms):
            read.latest_ms = latest
        source.last_data = self._last_data = _now()
        self._current = LineBatch(name, name, take[0][0], source.segment.category, [o for o, _ in take], lines,
                                  watermark_ms=watermark)
        now_wm = self._watermark_ms  # the element's timestamp is never behind the source's own watermark
        stamp = latest if latest is not None else (now_wm if now_wm is not None else int(time.time() * 1000))
        self._current_ts = _ts(stamp if now_wm is None else max(stamp, now_wm))
        self._update_watermark()
        if source.latest_ms is not None:  # each input's own watermark, for /metrics (watermark lag per input)
            Metrics.gauge("dpipe.input_watermark_ms", source.category).set(source.latest_ms - self._ooo_ms)

    def _replayed(self, before: int | None) -> int | None:
        """The watermark a re-read cut goes out under: the one it was first read under, so that every branch
        counts the same lines of it as before, but at least the replay watermark after a crash: windows final
        by then stay closed, their published rows stand."""
        floor = self._floor_ms
        if floor is None:
            return before
        return floor if before is None else max(before, floor)

    def _extend(self, source: _Input, end: int) -> None:
        """Read the input's segment on up to `end` (a recorded cut may reach past the buffer)."""
        assert source.segment is not None
        while source.read_to < end:
            try:
                lines, to = self._store.read_lines(source.segment, source.read_to, end - source.read_to)
            except FileNotFoundError:  # renamed .open -> .seg meanwhile
                sealed = None if source.segment.sealed else self._store.sealed(source.segment)
                if sealed is None:
                    return
                source.segment = sealed
                continue
            if not lines:
                return  # cut back by a gateway restart (never acknowledged): the cut ends where the data does
            source.buffer.extend(lines)
            source.read_to = to

    def _latest(self, lines: list[bytes]) -> int | None:
        """The batch's latest plausible event time. Unparseable and implausibly future times (beyond now +
        max_future_s) are ignored: one bad line must not push every later line behind the watermark."""
        limit = None
        if self._source.max_future_s is not None:
            limit = int((time.time() + self._source.max_future_s) * 1000)
        latest = None
        for line in lines:
            ms = event_ms(line)
            if ms is not None and (latest is None or ms > latest) and (limit is None or ms <= limit):
                latest = ms
        return latest

    def _update_watermark(self) -> None:
        """The slowest active input's watermark; with every input idle, the idle clock (module docstring)."""
        now = _now()
        idle_after = self._source.idle_timeout_s
        holders: list[int] = []
        for i in self._inputs.values():
            unread = i.buffered or i.behind
            if i.latest_ms is None:
                if unread:
                    return  # an input not read yet holds the watermark where it is
            elif unread or now - i.last_data < idle_after:
                holders.append(i.latest_ms - self._ooo_ms)
        if holders:
            self._advance_watermark(min(holders))
        elif self._last_event_ms is not None:
            self._advance_watermark(self._last_event_ms - self._ooo_ms + int((now - self._last_data) * 1000))

    def _advance_watermark(self, ms: int) -> None:
        if self._watermark_ms is None or ms > self._watermark_ms:
            self._watermark_ms = ms

    def _on_no_data(self) -> None:
        """Nothing to emit: move the watermark on (inputs may have gone idle), and end the stream after
        `idle_stop_s` without data and nothing unread (tests, benchmarks)."""
        src = self._source
        self._update_watermark()
        idle_for = _now() - self._last_data
        if src.idle_stop_s is not None and idle_for >= max(src.idle_stop_s, IDLE_POLLS * src.poll_interval_s) \
                and not any(i.behind for i in self._inputs.values()):
            self._finish_drain()  # a stop like a drained one: the next start goes on here, replays nothing

    # -- clean stop --

    def _drain_requested(self) -> bool:
        return self._store.exists(DRAIN)

    def _finish_drain(self) -> None:
        """Every batch handed out so far is the last: record the position and end."""
        positions = {c: [seq, offset] for c, (seq, offset) in self._positions().items()}
        self._store.write_atomic(_reader_file(DRAINED), orjson.dumps(positions))
        log.info("spool: drained at %s", positions)
        self._done = True

    # -- tailing --

    def _fill(self) -> None:
        """Refill every input's buffer with its next complete lines; new categories become inputs."""
        by_category: dict[str, list[Segment]] = {}
        by_seq: dict[int, Segment] = {}
        for segment in self._store.segments():  # a rename may list both names: sealed wins
            if segment.seq not in by_seq or segment.sealed:
                by_seq[segment.seq] = segment
        self._known.update(by_seq)
        for seq in sorted(by_seq):
            segment = by_seq[seq]
            by_category.setdefault(segment.category, []).append(segment)
        for category in by_category:
            if category not in self._inputs:
                self._inputs[category] = _Input(category, None, 0)
        for category, state in self._inputs.items():
            self._fill_input(state, by_category.get(category, []))

    def _fill_input(self, state: _Input, segments: list[Segment]) -> None:
        while True:
            segment = self._locate(state, segments)
            if segment is None:
                state.behind = state.gap is not None  # waiting out a gap: data lies ahead
                return
            try:
                lines, end = self._store.read_lines(segment, state.read_to, READ_BYTES)
            except FileNotFoundError:
                sealed = None if segment.sealed else self._store.sealed(segment)
                if sealed is None:
                    state.segment = None  # gone from under us: list again at the next poll
                    return
                state.segment = sealed  # renamed while open
                continue
            if lines:
                state.buffer, state.pos, state.read_to, state.behind = lines, 0, end, True
                return
            if not segment.sealed:
                sealed = self._store.sealed(segment)
                if sealed is None:
                    state.behind = False  # open, all read: wait for more
                    return
                state.segment = sealed  # read on to its true end
                continue
            self._check_tail(segment, state.read_to)
            assert state.seq is not None
            state.seq, state.offset, state.read_to, state.segment = state.seq + 1, 0, 0, None
            segments = [s for s in segments if s.seq >= state.seq]

    def _locate(self, state: _Input, segments: list[Segment]) -> Segment | None:
        """The segment at the input's position. Its seq is the input's `seq` or the next one of its category;
        a jump over seqs never seen in a listing waits GAP_GRACE_S (see there)."""
        if state.segment is not None:
            return state.segment
        ahead = [s for s in segments if state.seq is None or s.seq >= state.seq]
        if not ahead:
            state.gap = None
            return None
        first = ahead[0]
        if state.seq is not None and first.seq != state.seq:
            unseen = any(seq not in self._known for seq in range(state.seq, first.seq))
            if unseen:
                now = _now()
                if state.gap is None or state.gap[0] != first.seq:
                    state.gap = (first.seq, now)
                    return None
                if now - state.gap[1] < GAP_GRACE_S:
                    return None
            state.offset = state.read_to = 0  # the position's own segment is gone: it was read and deleted
        state.gap = None
        state.seq, state.segment = first.seq, first
        return first

    def _check_tail(self, segment: Segment, read_to: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            size = self._store.size(segment)
            if size > read_to:
                log.warning("spool: %s ends with %d bytes without a newline: not read", self._store.where(segment),
                            size - read_to)


class SpoolSource(UnboundedSource):
    """The spool as one unsplit source (its inputs are categories, one reader keeps all their cursors)."""

    def __init__(self, spool_dir: str, batch_lines: int = BATCH_LINES, max_out_of_order_s: float = 5.0,
                 poll_interval_s: float = 0.2, idle_stop_s: float | None = None,
                 max_future_s: float | None = 300.0, idle_timeout_s: float = 90.0, replay_span_s: float = 0.0,
                 replay_bytes: int = 2**29, publish_margin_s: float = PUBLISH_MARGIN_S) -> None:
        if batch_lines < 1:
            raise ValueError(f"batch_lines must be >= 1, got {batch_lines}")
        self.spool_dir = str(spool_dir)
        self.replay_span_s, self.replay_bytes, self.publish_margin_s = replay_span_s, replay_bytes, publish_margin_s
        self.batch_lines = batch_lines
        self.max_out_of_order_s = max_out_of_order_s
        self.poll_interval_s = poll_interval_s
        self.idle_stop_s = idle_stop_s
        self.max_future_s = max_future_s
        self.idle_timeout_s = idle_timeout_s

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
        self._watermark = Metrics.gauge("dpipe.read", "watermark_ms")

    def process(self, batch: LineBatch) -> Iterator[LineBatch | beam.pvalue.TaggedOutput]:
        n = len(batch.lines)
        nbytes = sum(map(len, batch.lines)) + n
        self._lines.inc(n)
        self._bytes.inc(nbytes)
        if batch.watermark_ms is not None:
            self._watermark.set(batch.watermark_ms)
        yield batch
        yield beam.pvalue.TaggedOutput(STATS, {"lines_read": n, "bytes_read": nbytes, "files_read": 0})


class ReadFromSpool(beam.PTransform):
    """Spool dir -> LineBatch (main output `lines`, timestamped with event time) and read statistics (`stats`),
    like ReadArchives, so one pipeline graph takes either source.

    `idle_stop_s` (tests, benchmarks): end the stream once nothing new has come for that long and nothing is
    left unread; None = run forever. `max_future_s`: event times further ahead of the wall clock move neither
    the watermark nor a batch's timestamp (None = trust them all). `idle_timeout_s`: after that long without
    data an input stops holding the watermark. `replay_span_s` (the longest window plus its lateness; 0: no
    windows) and `replay_bytes`: what is kept to recompute open windows after a crash (module docstring).
    """

    def __init__(self, spool_dir: str, batch_lines: int = BATCH_LINES, max_out_of_order_s: float = 5.0,
                 poll_interval_s: float = 0.2, idle_stop_s: float | None = None,
                 max_future_s: float | None = 300.0, idle_timeout_s: float = 90.0, replay_span_s: float = 0.0,
                 replay_bytes: int = 2**29, publish_margin_s: float = PUBLISH_MARGIN_S) -> None:
        super().__init__()
        self._source = SpoolSource(spool_dir, batch_lines, max_out_of_order_s, poll_interval_s, idle_stop_s,
                                   max_future_s, idle_timeout_s, replay_span_s, replay_bytes, publish_margin_s)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.pvalue.DoOutputsTuple:
        return (
            pbegin
            | "Tail" >> ReadFromUnboundedSource(self._source, poll_interval=self._source.poll_interval_s,
                                                max_read_time_seconds=BUNDLE_SECONDS)
            | "Stats" >> beam.ParDo(_StatsDoFn()).with_output_types(LineBatch).with_outputs(STATS, main="lines")
        )
