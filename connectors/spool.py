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

`SpoolWriter.append` returns only once the lines are on disk and fsynced: concurrent appends are written
together and share one fsync (group commit), which runs in a thread so the event loop keeps accepting.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

log = logging.getLogger("dpipe.spool")

SEGMENTS = "segments"
NEXT_SEQ = "next_seq"
OPEN, SEALED = ".open", ".seg"
CATEGORY = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_SEGMENT_NAME = re.compile(r"(\d{16})\.([A-Za-z][A-Za-z0-9_]*)(\.open|\.seg)")
SIZE_REFRESH_SECONDS = 1.0
"""How often the writer re-reads the spool's size from disk (the reader deletes segments behind its back)."""


class SinkError(Exception):
    """The sink cannot make lines durable now (closed, or its writer failed); the client should retry."""


class LineSink(Protocol):
    """Where the gateway puts lines: the spool here, a Pub/Sub topic elsewhere."""

    async def append(self, category: str, lines: list[bytes]) -> None:
        """Return only when the lines are durable; raise SinkError when they cannot be."""

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
            match = _SEGMENT_NAME.fullmatch(entry.name)
            if match:
                found.append(Segment(int(match[1]), match[2], Path(entry.path), match[3] == SEALED))
    return sorted(found, key=lambda s: s.seq)


def read_lines(path: str | Path, start_offset: int, max_bytes: int) -> tuple[list[tuple[int, bytes]], int]:
    """The complete lines from `start_offset`, about `max_bytes` of them: [(offset, line without \\n)], next offset.

    A partial last line (still being written) is left for the next call. A single line longer than `max_bytes`
    is still returned whole, so a reader always makes progress.
    """
    with open(path, "rb") as f:
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
    done: asyncio.Future[None]


class SpoolWriter:
    """A LineSink on local disk with group commit. Recovers the spool when created (see `recover`)."""

    def __init__(
        self,
        spool_dir: str | Path,
        segment_bytes: int = 64 * 2**20,
        segment_seconds: float = 5.0,
        max_spool_bytes: int = 2**30,
        fsync: bool = True,
    ) -> None:
        self.dir = segment_dir(spool_dir)
        self.segment_bytes = segment_bytes
        self.segment_seconds = segment_seconds
        self.max_spool_bytes = max_spool_bytes
        self.fsync = fsync
        self._seq_file = self.dir / NEXT_SEQ
        self._open: dict[str, _Open] = {}
        self._pending: list[_Append] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool-writer")
        self._error: BaseException | None = None
        self._closing = False
        self._counters = {"fsync_seconds_sum": 0.0, "fsync_seconds_count": 0, "segments_sealed_total": 0,
                          "written_bytes_total": 0}
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_dir(self.dir)
        self._next_seq = self.recover()
        self._bytes = spool_bytes(spool_dir)
        self._bytes_checked = time.monotonic()

    # -- startup --

    def recover(self) -> int:
        """Seal what a crash left open, cut back to its last complete line (never acknowledged data: an
        acknowledgement follows the fsync of whole lines). Returns the next seq to use."""
        segments = list_segments(self.dir.parent)
        for segment in segments:
            if segment.sealed:
                continue
            fd = os.open(segment.path, os.O_RDWR)
            try:
                size = os.fstat(fd).st_size
                keep = _complete_length(fd, size)
                if keep < size:
                    log.warning("spool: %s: dropping %d bytes of an unacknowledged partial line", segment.path,
                                size - keep)
                    os.ftruncate(fd, keep)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(segment.path, segment.path.with_suffix(SEALED))
        _fsync_dir(self.dir)
        stored = int(self._seq_file.read_text()) if self._seq_file.exists() else 0
        return max([stored, *(s.seq + 1 for s in segments)])

    # -- LineSink --

    async def append(self, category: str, lines: list[bytes]) -> None:
        if not CATEGORY.fullmatch(category):
            raise ValueError(f"bad category name {category!r}")
        if self._error is not None or self._closing:
            raise SinkError("the spool writer is closed" if self._error is None else f"spool failed: {self._error}")
        if not lines:
            return
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="spool-writer")
        done = asyncio.get_running_loop().create_future()
        self._pending.append(_Append(category, b"\n".join([*lines, b""]), done))  # one copy, newline-terminated
        self._wake.set()
        await done

    def full(self) -> bool:
        return self._bytes >= self.max_spool_bytes

    def healthy(self) -> bool:
        return self._error is None

    def stats(self) -> dict[str, float]:
        return {"spool_bytes": self._bytes, "open_segments": len(self._open), **self._counters}

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
            await loop.run_in_executor(self._executor, self._seal_all)
        self._executor.shutdown(wait=True)
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
            except BaseException as err:  # a failed write or fsync leaves the files unknown: stop for good
                log.exception("spool: writer failed; no more lines are accepted until a restart")
                self._error = err
                for item in [*batch, *self._pending]:
                    if not item.done.done():
                        item.done.set_exception(SinkError(f"spool failed: {err}"))
                raise
            for item in batch:
                if not item.done.done():  # a cancelled request still has its lines written
                    item.done.set_result(None)
            if self._closing and not self._pending:
                return

    def _idle_timeout(self) -> float:
        """Wake for the oldest open segment's deadline, and to refresh the spool size."""
        deadlines = [s.opened_at + self.segment_seconds for s in self._open.values()]
        deadlines.append(self._bytes_checked + SIZE_REFRESH_SECONDS)
        return max(0.01, min(deadlines) - time.monotonic())

    def _commit(self, batch: list[_Append]) -> None:
        """Write a batch, fsync each touched segment once, then seal what is due. Runs in the writer thread."""
        created = False
        for item in batch:
            segment = self._open.get(item.category)
            if segment is not None and segment.size and segment.size + len(item.data) > self.segment_bytes:
                self._seal(segment)  # a request's lines stay together: roll before, not within
                segment = None
            if segment is None:
                segment = self._create(item.category)
                created = True
            _write_all(segment.fd, item.data)
            segment.size += len(item.data)
            segment.dirty = True
            self._bytes += len(item.data)
            self._counters["written_bytes_total"] += len(item.data)
        self._sync(list(self._open.values()), created)
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

    def _sync(self, segments: list[_Open], directory: bool) -> None:
        started = time.perf_counter()
        synced = False
        for segment in segments:
            if segment.dirty:
                if self.fsync:
                    os.fdatasync(segment.fd)
                segment.dirty = False
                synced = True
        if directory and self.fsync:
            _fsync_dir(self.dir)  # new segment files must survive a crash with the lines acknowledged in them
        if synced and self.fsync:
            self._counters["fsync_seconds_sum"] += time.perf_counter() - started
            self._counters["fsync_seconds_count"] += 1

    def _create(self, category: str) -> _Open:
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

    def _seal_all(self) -> None:
        for segment in list(self._open.values()):
            self._seal(segment)
        if self.fsync:
            _fsync_dir(self.dir)
