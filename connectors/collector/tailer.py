"""Following files like `tail -F`, by fingerprint rather than by name.

A file is known by its fingerprint: device, inode, and a CRC-32 of its first line (at most FINGERPRINT_BYTES
bytes), as Vector's file source does. The collector keeps every followed file open, so a rename (rotation by
rename and create) changes nothing for the open file: it is read to its end, then released once no glob
matches it any more and it has been quiet for `rotate_wait`; a deleted file is released as soon as it is
read to its end. A file whose size falls below the read position (truncate, copytruncate) or whose first
line changed under the same inode is read again from 0. An inode reused by a new file after a restart has
another first line, so it does not inherit the old file's position.
"""

from __future__ import annotations

import glob
import logging
import os
import zlib
from collections import deque
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("dpipe.collector")

FINGERPRINT_BYTES = 256


@dataclass(frozen=True)
class Fingerprint:
    dev: int
    ino: int
    length: int
    crc: int

    @property
    def id(self) -> str:
        """The file's id in checkpoints and Idempotency-Keys: `dev.inode.length.crc` in hex."""
        return f"{self.dev:x}.{self.ino:x}.{self.length:x}.{self.crc:08x}"

    def matches(self, fd: int) -> bool:
        """Whether the open file still starts with the bytes this fingerprint was taken of."""
        head = os.pread(fd, self.length, 0)
        return len(head) == self.length and zlib.crc32(head) == self.crc


def fingerprint(fd: int, force: bool = False) -> Fingerprint | None:
    """The fingerprint of an open file, or None while it has neither a complete first line nor
    FINGERPRINT_BYTES bytes (unless `force`: then of whatever it holds, if anything)."""
    st = os.fstat(fd)
    head = os.pread(fd, FINGERPRINT_BYTES, 0)
    newline = head.find(b"\n")
    if newline >= 0:
        head = head[:newline + 1]
    elif len(head) < FINGERPRINT_BYTES and not (force and head):
        return None
    return Fingerprint(st.st_dev, st.st_ino, len(head), zlib.crc32(head))


def matching_paths(patterns: list[str], exclude: list[str]) -> dict[str, tuple[int, int]]:
    """Regular files matching any pattern and no exclude glob: path -> (dev, inode)."""
    excluded = {p for pattern in exclude for p in glob.glob(pattern, recursive=True)}
    found: dict[str, tuple[int, int]] = {}
    for pattern in patterns:
        for path in glob.glob(pattern, recursive=True):
            if path in excluded or path in found:
                continue
            try:
                st = os.stat(path)
            except OSError:  # gone between the listing and the stat
                continue
            if os.path.isfile(path):
                found[path] = (st.st_dev, st.st_ino)
    return found


def find_inode(path: str, dev: int, ino: int) -> str | None:
    """A path in `path`'s folder holding that inode (a file rotated away while the collector was down)."""
    folder = os.path.dirname(path) or "."
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.inode() == ino and entry.is_file(follow_symlinks=False) and entry.stat().st_dev == dev:
                    return entry.path
    except OSError:
        return None
    return None


@dataclass
class LongLine:
    """A line longer than the limit, being skipped to its newline: its start, first bytes and length so far."""

    start: int
    head: bytes
    size: int


@dataclass
class Block:
    """What one read gave: complete lines `data` at `start`, a `long` line finished, or a flushed partial line
    (`partial`: `data` has no newline in the file; one was added)."""

    start: int
    end: int
    data: bytes = b""
    long: LongLine | None = None
    partial: bool = False


class TailedFile:
    """One followed file: its open descriptor, where reading is, and which bytes are acknowledged."""

    def __init__(self, source: int, path: str, fd: int, category: str, position: int,
                 fp: Fingerprint | None) -> None:
        st = os.fstat(fd)
        self.source = source
        self.path = path
        self.fd = fd
        self.dev, self.ino = st.st_dev, st.st_ino
        self.category = category
        self.fp = fp
        self.pos = position  # the next byte to read
        self.acked = position  # every byte before it is acknowledged (or was skipped)
        self.generation = 0  # grows when the file is read again from 0
        self.size = st.st_size
        self.gone_since: float | None = None  # no glob path leads to it since then
        self.last_read = 0.0  # when a block was last handed on (monotonic)
        self.partial_since: float | None = None  # a line without newline waits at `pos` since then
        self.long: LongLine | None = None
        self.outstanding: deque[Any] = deque()  # sealed batches not yet acknowledged, in file order (batcher)

    @property
    def key(self) -> tuple[int, int]:
        return self.dev, self.ino

    @property
    def id(self) -> str:
        assert self.fp is not None
        return self.fp.id

    def stat(self) -> os.stat_result:
        st = os.fstat(self.fd)
        self.size = st.st_size
        return st

    def reset(self, why: str) -> None:
        """Read again from 0: the file was truncated or rewritten under the same inode."""
        log.warning("collector: %s %s; reading it again from the start", self.path, why)
        self.pos = self.acked = 0
        self.generation += 1
        self.fp = fingerprint(self.fd)
        self.partial_since = None
        self.long = None
        self.outstanding = deque()

    def read(self, limit: int, max_lines: int, max_line: int, now: float, partial_timeout: float,
             flush_partial: bool = False) -> Block | None:
        """Read on from `pos`, at most `limit` bytes and `max_lines` lines; None when there is nothing to hand on
        yet. A partial last line stays in the file until its newline comes, or for `partial_timeout`
        (`flush_partial`: now). Lines longer than `max_line` are skipped to their end and handed on cut."""
        again = (limit, max_lines, max_line, now, partial_timeout, flush_partial)
        if self.fp is None:
            self.fp = fingerprint(self.fd)
        data = os.pread(self.fd, limit, self.pos)
        if not data:
            if self.stat().st_size < self.pos:
                self.reset(f"shrank from {self.pos} to {self.size} bytes (truncated)")
                return self.read(*again)
            if self.long is not None and flush_partial:  # a file released while in a long line without end
                long, self.long = self.long, None
                return Block(long.start, self.pos, long=long)
            return None
        if self.fp is not None and not self.fp.matches(self.fd):
            self.reset("starts with other bytes (truncated and rewritten)")
            return self.read(*again)
        start = self.pos
        newline = data.find(b"\n") if self.long is not None else -1
        if self.long is not None:  # skipping the rest of a long line
            taken = len(data) if newline < 0 else newline + 1
            self.long.size += taken - (newline >= 0)
            self.pos += taken
            if newline < 0:
                return None
            long, self.long = self.long, None
            return Block(long.start, self.pos, long=long)
        end = data.rfind(b"\n") + 1
        if end and data.count(b"\n", 0, end) > max_lines:
            end = 0
            for _ in range(max_lines):
                end = data.index(b"\n", end) + 1
        if end:
            self.pos += end
            self.partial_since = None
            return Block(start, self.pos, data[:end])
        if len(data) > max_line:
            self.long = LongLine(start, data[:max_line], len(data))
            self.pos += len(data)
            self.partial_since = None
            return None
        if self.partial_since is None:
            self.partial_since = now
        if flush_partial or now - self.partial_since >= partial_timeout:
            if self.fp is None:
                self.fp = fingerprint(self.fd, force=True)
            self.pos += len(data)
            self.partial_since = None
            return Block(start, self.pos, data + b"\n", partial=True)
        return None

    def at_end(self) -> bool:
        return self.pos >= self.stat().st_size and self.long is None

    def deleted(self) -> bool:
        return os.fstat(self.fd).st_nlink == 0

    def close(self) -> None:
        os.close(self.fd)
        self.fd = -1


def open_file(path: str) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        log.warning("collector: cannot open %s: %s", path, err)
        return None
