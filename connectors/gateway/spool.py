"""The durable spool: the gateway appends acknowledged ALS lines to segment files; the stream source tails them.

Layout (the reader depends on exactly this):

    DIR/segments/{seq:016d}.{category}.open   being appended; at most one per category
    DIR/segments/{seq:016d}.{category}.seg    sealed: complete, never written again
    DIR/segments/next_seq                     the writer's high-water mark of seq (see below)

A segment holds raw lines, each ending in `\\n`, in acknowledgement order; a line's source is the segment name
`{seq:016d}.{category}` and its byte offset, which never changes once written. `seq` grows across categories
and restarts; `next_seq` keeps it growing even after the reader has deleted every segment, so a name is never
used twice. A segment is sealed (atomic rename, then fsync of the directory) when it reaches `segment_bytes`
or has been open `segment_seconds`; the reader deletes sealed segments once it has processed them.

    DIR/segments/keys                         idempotency keys of recent requests (see below)

`SpoolWriter.append` returns only once the lines are on disk and fsynced: concurrent appends are written
together and share one fsync (group commit), which runs in a thread so the event loop keeps accepting.

Write errors (disk full, file-size limit, EIO) fail only the group commit they hit: its lines are cut off
again, the segments it touched are sealed (a reader that already passed their old end moves on to the next
seq rather than waiting at an offset the next write would reuse), and the next commit starts new segments,
so the writer recovers when space returns, without a restart. At most `max_open_segments` segments are open:
a category that needs one beyond that seals the one written least recently. `max_spool_bytes` is checked per
request as it is written, so concurrent requests cannot overshoot it together.

Idempotency keys: a request with a key appends one JSON line `{"c", "k", "s", "o", "e", "n", "t"}` (category,
key, segment seq, start and end offset, lines, wall time) to `keys` before its lines are written, and both are
fsynced before the acknowledgement. A restart keeps the entries whose lines are all in their segment, cuts a
segment back to the start of a request whose lines are not all there (so a retry never repeats a prefix), and
drops entries older than `idempotency_seconds`. A key seen again within that window (and among the newest
`idempotency_keys`) is acknowledged without writing anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol

import orjson

from transforms.category import MAX_CATEGORY

log = logging.getLogger("dpipe.spool")

SEGMENTS = "segments"
NEXT_SEQ = "next_seq"
KEYS = "keys"
OPEN, SEALED = ".open", ".seg"
CATEGORY = re.compile(rf"[A-Za-z][A-Za-z0-9_]{{0,{MAX_CATEGORY - 1}}}")
"""Categories the writer accepts: bounded, so `{seq}.{category}.open` and the archive files named after a
segment stay short, safe file names."""
SEGMENT_NAME = re.compile(r"(\d{16})\.([A-Za-z][A-Za-z0-9_]*)(\.open|\.seg)")
SIZE_REFRESH_SECONDS = 1.0
"""How often the writer re-reads the spool's size from disk (the reader deletes segments behind its back)."""


class SinkError(Exception):
    """The sink cannot make lines durable now (closed, or its writer failed); the client should retry."""


class SinkFull(SinkError):
    """Writing the request would pass the sink's size bound: refused, nothing written (429)."""


class SinkBusy(SinkError):
    """A request with the same idempotency key is being written right now (409): retry to learn its outcome."""


class WriteFailed(SinkError):
    """A write or fsync failed; the request's lines were cut off again. `storage` when the disk is full (507)."""

    def __init__(self, err: OSError) -> None:
        super().__init__(f"spool write failed: {err.strerror or err}")
        self.storage = err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class LineSink(Protocol):
    """Where the gateway puts lines: the spool here, a Pub/Sub topic elsewhere."""

    async def append(self, category: str, lines: list[bytes], key: str | None = None) -> bool:
        """Return only when the lines are durable; raise SinkError when they cannot be. With an idempotency
        `key` the sink may know the request already: then it writes nothing and returns False."""

    def full(self) -> bool:
        """True while new lines should be refused (429) instead of buffered."""

    def healthy(self) -> bool:
        """False once the sink cannot accept anything any more (its writer died)."""

    def stats(self) -> dict[str, float]:
        """Numbers for /metrics; `x_sum` with `x_count` is a summary, `x_total` a counter, others gauges."""

    async def close(self) -> None:
        """Make everything accepted durable and release files or connections."""


# ---- read helpers (pure, synchronous): the stream source's API ----


@dataclass(frozen=True)
class Segment:
    seq: int
    category: str
    path: Path
    sealed: bool

    @property
    def name(self) -> str:
        """`{seq:016d}.{category}`: the segment's identity in a line's source, whether open or sealed."""
        return f"{self.seq:016d}.{self.category}"


def segment_dir(spool_dir: str | Path) -> Path:
    return Path(spool_dir) / SEGMENTS


def list_segments(spool_dir: str | Path) -> list[Segment]:
    """Every segment of the spool, open and sealed, by seq; other files are ignored."""
    found = []
    with contextlib.suppress(FileNotFoundError), os.scandir(segment_dir(spool_dir)) as entries:
        for entry in entries:
            match = SEGMENT_NAME.fullmatch(entry.name)
            if match:
                found.append(Segment(int(match[1]), match[2], Path(entry.path), match[3] == SEALED))
    return sorted(found, key=lambda s: s.seq)


def read_lines(path: str | Path, start_offset: int, max_bytes: int) -> tuple[list[tuple[int, bytes]], int]:
    """The complete lines from `start_offset`, about `max_bytes` of them: [(offset, line without \\n)], next offset.

    A partial last line (still being written) is left for the next call. A single line longer than `max_bytes`
    is still returned whole, so a reader always makes progress.
    """
    with open(path, "rb") as f:
        return read_lines_from(f, start_offset, max_bytes)


def read_lines_from(f: BinaryIO, start_offset: int, max_bytes: int) -> tuple[list[tuple[int, bytes]], int]:
    """`read_lines` of an open file (a local one, or one of Beam's filesystems)."""
    f.seek(start_offset)
    data = f.read(max_bytes)
    end = data.rfind(b"\n") + 1
    while end == 0 and len(data) >= max_bytes:  # one long line: read on to its end
        more = f.read(max_bytes)
        if not more:
            break
        newline = more.find(b"\n")
        data += more
        if newline >= 0:
            end = len(data) - len(more) + newline + 1
    lines = data[:end].split(b"\n")
    lines.pop()  # the empty string after the last newline
    out, offset = [], start_offset
    for line in lines:
        out.append((offset, line))
        offset += len(line) + 1
    return out, start_offset + end


def spool_lines(spool_dir: str | Path) -> list[tuple[str, int, bytes]]:
    """Every complete line in the spool as (segment name, offset, line), in seq order: for checks and dumps."""
    out = []
    for segment in list_segments(spool_dir):
        lines, _ = read_lines(segment.path, 0, segment.path.stat().st_size + 1)
        out += [(segment.name, offset, line) for offset, line in lines]
    return out


def spool_bytes(spool_dir: str | Path) -> int:
    """Bytes on disk in the spool's segments (files deleted meanwhile count as gone)."""
    total = 0
    for segment in list_segments(spool_dir):
        with contextlib.suppress(FileNotFoundError):
            total += segment.path.stat().st_size
    return total


# ---- the writer ----


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _lock_dir(path: Path) -> int:
    """Hold an exclusive lock on the segment folder: two writers would interleave seqs and tails. The kernel
    releases it when the process dies, so a restart after kill -9 is not blocked."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SinkError(f"{path} is in use by another spool writer") from None
    return fd


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _complete_length(fd: int, size: int, block: int = 1 << 16) -> int:
    """Length of the file up to and including its last newline."""
    end = size
    while end > 0:
        start = max(0, end - block)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            return start + newline + 1
        end = start
    return 0


@dataclass
class _Open:
    """A segment being appended; only the writer thread touches it."""

    seq: int
    category: str
    path: Path
    fd: int
    opened_at: float
    size: int = 0
    dirty: bool = False


@dataclass
class _Append:
    category: str
    data: bytes
    lines: int
    key: str | None
    done: asyncio.Future[bool]
    error: SinkError | None = None
    entry: dict | None = None
    """Its journal line once written (keyed requests)."""


@dataclass
class _Mark:
    """Where a segment stood before the group commit that touched it: what a failed commit cuts back to."""

    segment: _Open
    size: int
    created: bool


def _key_id(category: str, key: str) -> str:
    return f"{category}\0{key}"


class SpoolWriter:
    """A LineSink on local disk with group commit. Recovers the spool when created (see `recover`)."""

    def __init__(
        self,
        spool_dir: str | Path,
        segment_bytes: int = 64 * 2**20,
        segment_seconds: float = 5.0,
        max_spool_bytes: int = 2**30,
        fsync: bool = True,
        max_open_segments: int = 256,
        idempotency_seconds: float = 3600.0,
        idempotency_keys: int = 100_000,
    ) -> None:
        self.dir = segment_dir(spool_dir)
        self.segment_bytes = segment_bytes
        self.segment_seconds = segment_seconds
        self.max_spool_bytes = max_spool_bytes
        self.fsync = fsync
        self.max_open_segments = max_open_segments
        self.idempotency_seconds = idempotency_seconds
        self.idempotency_keys = idempotency_keys
        self._seq_file = self.dir / NEXT_SEQ
        self._keys_file = self.dir / KEYS
        self._open: dict[str, _Open] = {}  # least recently written first
        self._pending: list[_Append] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool-writer")
        self._error: BaseException | None = None
        self._closing = False
        self._counters = {"fsync_seconds_sum": 0.0, "fsync_seconds_count": 0, "segments_sealed_total": 0,
                          "written_bytes_total": 0, "write_errors_total": 0, "duplicates_total": 0}
        self._keys: dict[str, dict] = {}  # key id -> journal entry, oldest first
        self._claimed: set[str] = set()  # keys of requests being written
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_dir(self.dir)
        self._next_seq = self.recover()
        self._keys_fd = os.open(self._keys_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._keys_size = os.fstat(self._keys_fd).st_size
        self._keys_dirty = False
        self._bytes = spool_bytes(spool_dir)
        self._bytes_checked = time.monotonic()

    # -- startup --

    def recover(self) -> int:
        """Seal what a crash left open, cut back to its last complete line (never acknowledged data: an
        acknowledgement follows the fsync of whole lines) and to the start of a keyed request not wholly
        written; keep the journal's valid entries. Returns the next seq to use."""
        segments = list_segments(self.dir.parent)
        entries = _read_journal(self._keys_file, time.time() - self.idempotency_seconds)
        by_seq: dict[int, list[dict]] = {}
        for entry in entries:
            by_seq.setdefault(entry["s"], []).append(entry)
        sealed = {s.seq for s in segments if s.sealed}
        for segment in segments:
            if segment.sealed:
                continue
            if segment.seq in sealed:  # never written so: keep both, the sealed one is the segment
                aside = segment.path.with_name(segment.path.name + ".orphan")
                log.warning("spool: %s and its sealed twin both exist: moved aside to %s", segment.path, aside)
                os.replace(segment.path, aside)
                continue
            fd = os.open(segment.path, os.O_RDWR)
            try:
                size = os.fstat(fd).st_size
                keep = _complete_length(fd, size)
                for entry in by_seq.get(segment.seq, ()):
                    if entry["e"] > keep:  # the request's lines are not all there: it was never acknowledged
                        keep = min(keep, entry["o"])
                        entry["drop"] = True
                if keep < size:
                    log.warning("spool: %s: dropping %d bytes of unacknowledged lines", segment.path, size - keep)
                    os.ftruncate(fd, keep)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(segment.path, segment.path.with_suffix(SEALED))
        for entry in entries:  # a segment gone was read and deleted by the stream: its lines were whole
            if not entry.pop("drop", False):
                self._keys[_key_id(entry["c"], entry["k"])] = entry
        self._evict()
        self._rewrite_journal()
        _fsync_dir(self.dir)
        return max([self._stored_seq(), *(s.seq + 1 for s in segments), *(e["s"] + 1 for e in entries)])

    def _stored_seq(self) -> int:
        """`next_seq` as written; a damaged one is said and ignored (the segments and journal still bound it)."""
        try:
            return int(self._seq_file.read_bytes().decode("ascii"))
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as err:
            log.warning("spool: %s is damaged (%s): going on from the segments' seqs", self._seq_file, err)
            return 0

    def _rewrite_journal(self) -> None:
        """Replace the journal by the live entries (atomic rename; the caller fsyncs the directory)."""
        tmp = self._keys_file.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(b"".join(orjson.dumps(e) + b"\n" for e in self._keys.values()))
            if self.fsync:
                os.fsync(f.fileno())
        os.replace(tmp, self._keys_file)

    def _evict(self) -> None:
        """Forget keys older than the window, and the oldest beyond `idempotency_keys`."""
        cutoff = time.time() - self.idempotency_seconds
        while self._keys:
            oldest = next(iter(self._keys))
            if len(self._keys) <= self.idempotency_keys and self._keys[oldest]["t"] >= cutoff:
                break
            del self._keys[oldest]

    # -- LineSink --

    async def append(self, category: str, lines: list[bytes], key: str | None = None) -> bool:
        if not CATEGORY.fullmatch(category):
            raise ValueError(f"bad category name {category!r}")
        if self._error is not None or self._closing:
            raise SinkError("the spool writer is closed" if self._error is None else f"spool failed: {self._error}")
        ident = None if key is None else _key_id(category, key)
        if ident is not None:
            entry = self._keys.get(ident)
            if entry is not None and entry["t"] >= time.time() - self.idempotency_seconds:
                self._counters["duplicates_total"] += 1
                return False
            if ident in self._claimed:
                raise SinkBusy("a request with this Idempotency-Key is being written; retry to get its outcome")
        if not lines:
            return True
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="spool-writer")
        done = asyncio.get_running_loop().create_future()
        data = b"\n".join([*lines, b""])  # one copy, newline-terminated
        self._pending.append(_Append(category, data, len(lines), key, done))
        self._wake.set()
        if ident is None:
            return await done
        self._claimed.add(ident)
        try:
            return await done
        finally:
            self._claimed.discard(ident)

    def full(self) -> bool:
        return self._bytes >= self.max_spool_bytes

    def healthy(self) -> bool:
        return self._error is None

    def stats(self) -> dict[str, float]:
        return {"spool_bytes": self._bytes, "open_segments": len(self._open), "idempotency_keys": len(self._keys),
                **self._counters}

    async def close(self) -> None:
        """Commit what is pending, seal every open segment, stop the writer task. Idempotent."""
        if self._lock < 0:
            return
        self._closing = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        loop = asyncio.get_running_loop()
        if self._error is None:
            sealed = await loop.run_in_executor(self._executor, self._seal_all)
            log.info("spool: sealed %d open segments in %s", sealed, self.dir)
        self._executor.shutdown(wait=True)
        os.close(self._keys_fd)
        os.close(self._lock)
        self._lock = -1

    # -- the writer task (event loop) and its commits (writer thread) --

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with asyncio.timeout(self._idle_timeout()):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            batch, self._pending = self._pending, []
            try:
                await loop.run_in_executor(self._executor, self._commit, batch)
            except BaseException as err:  # a failed roll-back leaves the files unknown: stop for good
                log.error("spool: writer failed and could not cut back its last commit (%s); no more lines are "
                          "accepted until a restart", err)
                self._error = err
                for item in [*batch, *self._pending]:
                    if not item.done.done():
                        item.done.set_exception(SinkError(f"spool failed: {err}"))
                raise
            for item in batch:
                if item.entry is not None and item.error is None:
                    self._keys[_key_id(item.category, item.entry["k"])] = item.entry
                if item.done.done():
                    continue  # a cancelled request still has its lines written
                if item.error is not None:
                    item.done.set_exception(item.error)
                else:
                    item.done.set_result(True)
            self._evict()
            if self._closing and not self._pending:
                return

    def _idle_timeout(self) -> float:
        """Wake for the oldest open segment's deadline, and to refresh the spool size."""
        deadlines = [s.opened_at + self.segment_seconds for s in self._open.values()]
        deadlines.append(self._bytes_checked + SIZE_REFRESH_SECONDS)
        return max(0.01, min(deadlines) - time.monotonic())

    def _commit(self, batch: list[_Append]) -> None:
        """Write a batch, fsync each touched file once, then seal what is due. Runs in the writer thread.

        A write error fails the whole batch: every request of it gets a WriteFailed and is cut off again."""
        if self._keys_size > (2 * len(self._keys) + 1000) * 200:  # mostly forgotten keys: compact
            self._compact_journal()
        marks: dict[int, _Mark] = {}
        keys_mark = self._keys_size
        try:
            created = self._write(batch, marks)
            self._sync(list(self._open.values()), created)
        except OSError as err:
            self._counters["write_errors_total"] += 1
            log.warning("spool: write failed (%s): %d requests refused and cut off again", err, len(batch))
            self._roll_back(marks, keys_mark)  # raises when it cannot: then the writer stops
            for item in batch:
                item.error, item.entry = item.error or WriteFailed(err), None
            return
        now = time.monotonic()
        due = [s for s in self._open.values() if s.size >= self.segment_bytes
               or now - s.opened_at >= self.segment_seconds]
        for segment in due:
            self._seal(segment)
        if due and self.fsync:
            _fsync_dir(self.dir)
        if now - self._bytes_checked >= SIZE_REFRESH_SECONDS:
            self._bytes = spool_bytes(self.dir.parent)
            self._bytes_checked = now

    def _compact_journal(self) -> None:
        """Rewrite the journal with the keys still remembered (between commits: every entry is in _keys)."""
        try:
            self._rewrite_journal()
            _fsync_dir(self.dir)
        except OSError as err:  # the old journal is still whole: compact later
            log.warning("spool: cannot compact %s: %s", self._keys_file, err)
            return
        os.close(self._keys_fd)
        self._keys_fd = os.open(self._keys_file, os.O_WRONLY | os.O_APPEND)
        self._keys_size = os.fstat(self._keys_fd).st_size

    def _write(self, batch: list[_Append], marks: dict[int, _Mark]) -> bool:
        """Write each request's journal line, then its lines; returns whether a segment file was created."""
        created = False
        for item in batch:
            if self._bytes + len(item.data) > self.max_spool_bytes:
                item.error = SinkFull("spool full; retry later")  # checked on what is written, one by one
                continue
            segment = self._open.get(item.category)
            if segment is not None and segment.size and segment.size + len(item.data) > self.segment_bytes:
                self._seal(segment)  # a request's lines stay together: roll before, not within
                segment = None
            if segment is None:
                segment = self._create(item.category, marks)
                created = True
            else:
                self._open[item.category] = self._open.pop(item.category)  # most recently written last
            marks.setdefault(segment.seq, _Mark(segment, segment.size, False))
            if item.key is not None:
                item.entry = {"c": item.category, "k": item.key, "s": segment.seq, "o": segment.size,
                              "e": segment.size + len(item.data), "n": item.lines, "t": time.time()}
                line = orjson.dumps(item.entry) + b"\n"
                _write_all(self._keys_fd, line)  # before the lines: a crash between keeps no false entry
                self._keys_size += len(line)
                self._keys_dirty = True
            _write_all(segment.fd, item.data)
            segment.size += len(item.data)
            segment.dirty = True
            self._bytes += len(item.data)
            self._counters["written_bytes_total"] += len(item.data)
        return created

    def _roll_back(self, marks: dict[int, _Mark], keys_mark: int) -> None:
        """Cut every segment a failed batch touched back to where it stood, and seal it; drop new ones."""
        for mark in marks.values():
            segment = mark.segment
            self._bytes -= segment.size - mark.size
            is_open = self._open.get(segment.category) is segment
            if is_open:
                os.close(segment.fd)
                del self._open[segment.category]
            path = segment.path if is_open else segment.path.with_suffix(SEALED)
            if mark.created:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                continue
            os.truncate(path, mark.size)
            if self.fsync:
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            if is_open:
                os.replace(path, path.with_suffix(SEALED))
                self._counters["segments_sealed_total"] += 1
        if self._keys_size > keys_mark:
            os.ftruncate(self._keys_fd, keys_mark)
            self._keys_size = keys_mark
        if self.fsync:
            _fsync_dir(self.dir)

    def _sync(self, segments: list[_Open], directory: bool) -> None:
        started = time.perf_counter()
        synced = False
        for segment in segments:
            if segment.dirty:
                if self.fsync:
                    os.fdatasync(segment.fd)
                segment.dirty = False
                synced = True
        if self._keys_dirty:
            if self.fsync:
                os.fdatasync(self._keys_fd)
            self._keys_dirty = False
        if directory and self.fsync:
            _fsync_dir(self.dir)  # new segment files must survive a crash with the lines acknowledged in them
        if synced and self.fsync:
            self._counters["fsync_seconds_sum"] += time.perf_counter() - started
            self._counters["fsync_seconds_count"] += 1

    def _create(self, category: str, marks: dict[int, _Mark]) -> _Open:
        """A new segment for `category`; seals the least recently written one beyond `max_open_segments`
        (never one this batch wrote, whose roll-back needs it open)."""
        if len(self._open) >= self.max_open_segments:
            idle = next((s for s in self._open.values() if s.seq not in marks), None)
            if idle is not None:
                self._seal(idle)
        seq = self._next_seq
        self._next_seq += 1
        tmp = self._seq_file.with_suffix(".tmp")
        tmp.write_text(str(self._next_seq))
        if self.fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, self._seq_file)  # made durable with the directory fsync that follows a create
        path = self.dir / f"{seq:016d}.{category}{OPEN}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        segment = _Open(seq, category, path, fd, time.monotonic())
        self._open[category] = segment
        marks[seq] = _Mark(segment, 0, True)
        return segment

    def _seal(self, segment: _Open) -> None:
        """Flush and rename to .seg; the caller fsyncs the directory before anything is acknowledged after it."""
        self._sync([segment], False)
        os.close(segment.fd)
        del self._open[segment.category]
        try:
            os.replace(segment.path, segment.path.with_suffix(SEALED))
        except FileNotFoundError:  # removed by someone else: nothing left to seal
            log.warning("spool: %s vanished before it was sealed", segment.path)
            return
        self._counters["segments_sealed_total"] += 1

    def _seal_all(self) -> int:
        count = len(self._open)
        for segment in list(self._open.values()):
            self._seal(segment)
        if self.fsync:
            _fsync_dir(self.dir)
        return count


def _read_journal(path: Path, cutoff: float) -> list[dict]:
    """The journal's entries newer than `cutoff`; a torn last line (kill -9 while writing it) is skipped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    entries = []
    for line in data.split(b"\n"):
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("t"), float | int) and entry["t"] >= cutoff and all(
                isinstance(entry.get(k), int) for k in "soen") and isinstance(entry.get("k"), str) \
                and isinstance(entry.get("c"), str):
            entries.append(entry)
    return entries
