"""ReadArchives: the bounded source over historical log files (local disk, S3, HDFS; plain, .gz, .bz2).

Parallelism comes from the source (docs/architecture.md): uncompressed files are cut into byte ranges, compressed files
are one range each; the ranges are planned where the pipeline is built, and a Reshuffle spreads the (tiny)
range descriptors over the workers, and each worker reads,
parses and writes its ranges without shipping lines to another process. A range owns every line whose first
byte lies inside it, so ranges never lose or repeat a line wherever they are cut.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import logging
import os
import sys
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from connectors.progress import ProgressFiles
from pipelines.validation import UserError
from transforms.als import MAX_LINE_BYTES
from transforms.category import UnknownCategory, category_from_path
from transforms.event import LineBatch


def _progress_logger() -> logging.Logger:
    """Progress goes straight to the worker's stderr: Beam's worker log forwarding would bury it."""
    logger = logging.getLogger("dpipe.progress")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s dpipe progress [pid %(process)d]: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger

STATS = "stats"
PROGRESS_EVERY = float(os.environ.get("DPIPE_PROGRESS_SECONDS", "10"))


class InputError(UserError):
    """An input glob the user gave cannot be read (matches nothing, or the filesystem refused)."""


@dataclass(frozen=True, slots=True)
class FileRange:
    """Lines of `path` starting in [start, end); end None = to the end of the (decompressed) stream."""

    path: str
    start: int
    end: int | None

    @property
    def shard(self) -> str:
        digest = hashlib.blake2b(self.path.encode("utf-8"), digest_size=8).hexdigest()
        return f"{digest}-{self.start:012d}"


def check_inputs(patterns: list[str]) -> None:
    """Fail before the pipeline starts when a glob matches nothing: a typo must not look like an empty day."""
    for pattern in patterns:
        try:
            result = FileSystems.match([pattern], limits=[1])[0]
        except Exception as err:  # Beam wraps every filesystem failure differently; report them all
            raise InputError(f"--input {pattern}: cannot list it: {err}") from None
        if not result.metadata_list:
            raise InputError(f"--input {pattern}: no file matches this pattern")


def is_compressed(path: str) -> bool:
    return CompressionTypes.detect_compression_type(path) != CompressionTypes.UNCOMPRESSED


def plan_ranges(path: str, size: int, chunk_bytes: int) -> list[FileRange]:
    """Cut a file into byte ranges of about `chunk_bytes`; a compressed file cannot be cut.

    Nothing to read in an empty file, nor in a folder a glob matched (HDFS lists folders with size 0).
    """
    if size == 0:
        return []
    if is_compressed(path) or size <= chunk_bytes:
        return [FileRange(path, 0, None)]
    return [FileRange(path, start, min(start + chunk_bytes, size)) for start in range(0, size, chunk_bytes)]


def iter_line_blocks(
    stream: BinaryIO, start: int = 0, end: int | None = None, block_bytes: int = 4 << 20,
    max_line: int | None = MAX_LINE_BYTES,
) -> Iterator[tuple[list[int], list[bytes]]]:
    """Yield (offsets, lines) for every line whose first byte lies in [start, end), block by block.

    Lines are split on `\\n` (which is removed); offsets are byte offsets of each line's start in the stream.
    A range that starts inside a line leaves that line to the range before it, which reads past its own end
    to finish it. A last line without `\\n` is still a line; the empty string after a final `\\n` is not.
    A line longer than `max_line` comes cut to its first `max_line + 1` bytes (the parser makes it a `line too
    long` dead letter); the rest is skipped as it is read, so memory stays within a block and `max_line`.
    """
    if start > 0:
        stream.seek(start - 1)  # begin on the byte before: if it is '\n', the first piece is empty
        pos, skip_first = start - 1, True
    else:
        pos, skip_first = 0, False
    tail = b""
    long_len = -1  # >= 0: skipping the rest of an over-long line (tail holds its cut start)
    while True:
        block = stream.read(block_bytes)
        eof = not block
        offsets: list[int] = []
        lines: list[bytes] = []
        if long_len >= 0:
            newline = block.find(b"\n")
            if newline < 0 and not eof:
                long_len += len(block)
                continue
            long_len += max(newline, 0)
            if skip_first:
                skip_first = False
            elif end is not None and pos >= end:
                return
            else:
                offsets.append(pos)
                lines.append(tail)
            pos += long_len + 1
            tail, long_len = b"", -1
            if eof:
                yield offsets, lines
                return
            block = block[newline + 1:]
        data = tail + block if tail else block
        if eof:
            if not data:
                if lines:
                    yield offsets, lines
                return
            pieces, tail = [data], b""
        else:
            pieces = data.split(b"\n")
            tail = pieces.pop()
        finished = False
        for piece in pieces:
            if skip_first:
                skip_first = False
            elif end is not None and pos >= end:
                finished = True
                break
            else:
                offsets.append(pos)
                lines.append(piece if max_line is None or len(piece) <= max_line else piece[:max_line + 1])
            pos += len(piece) + 1
        if lines:
            yield offsets, lines
        if finished or eof:
            return
        if max_line is not None and len(tail) > max_line:
            tail, long_len = tail[:max_line + 1], len(tail)


class FileError(Exception):
    """A file that cannot be read to its end: the reason, phrased for the user."""


def describe_read_error(err: Exception) -> str:
    """Why a file could not be read (wholly), in a few words and the library's own."""
    if isinstance(err, IsADirectoryError):
        return "is a folder: give a glob of its files, such as DIR/* or DIR/**"
    if isinstance(err, PermissionError):
        return "permission denied"
    if isinstance(err, EOFError):
        return "truncated: the compressed data ends before its end marker"
    if isinstance(err, gzip.BadGzipFile | zlib.error):
        return f"not valid gzip data: {err}"
    if isinstance(err, OSError) and "Invalid data stream" in str(err):
        return "not valid bzip2 data"
    return f"{type(err).__name__}: {err}"


class _UpToTheDamage:
    """A decompressing reader whose read() returns what decompressed before an error, and raises the error
    at the next call: the lines before a truncation or corruption are read, then the file is reported."""

    def __init__(self, stream: gzip.GzipFile | bz2.BZ2File, piece: int = 1 << 16) -> None:
        self._stream, self._piece = stream, piece
        self._error: Exception | None = None

    def read(self, size: int) -> bytes:
        if self._error is not None:
            raise self._error
        parts, got = [], 0
        while got < size:
            try:
                part = self._stream.read1(min(self._piece, size - got))
            except (OSError, EOFError, zlib.error) as err:
                if not parts:
                    raise
                self._error = err
                break
            if not part:
                break
            parts.append(part)
            got += len(part)
        return b"".join(parts)

    def __enter__(self) -> _UpToTheDamage:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stream.close()


def open_decompressed(path: str) -> BinaryIO:
    """The file's bytes, decompressed for .gz and .bz2 with Python's readers, which raise at a truncated end,
    on corrupt data and on data after the last stream (Beam's reader stops silently at a truncated end)."""
    raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    kind = CompressionTypes.detect_compression_type(path)
    if kind == CompressionTypes.GZIP:
        return _UpToTheDamage(gzip.GzipFile(fileobj=raw, mode="rb"))  # type: ignore[return-value]
    if kind == CompressionTypes.BZIP2:
        return _UpToTheDamage(bz2.BZ2File(raw))  # type: ignore[return-value]
    return raw


def read_range(rng: FileRange, block_bytes: int = 4 << 20) -> Iterator[LineBatch]:
    """The lines of a range, block by block, as LineBatches named after the range (its shard). Raises
    FileError when the file cannot be read to its end (the batches before it were good)."""
    try:
        category, category_error = category_from_path(rng.path), None
    except UnknownCategory as err:
        category, category_error = None, str(err)
    try:
        with open_decompressed(rng.path) as stream:
            for seq, (offsets, lines) in enumerate(iter_line_blocks(stream, rng.start, rng.end, block_bytes)):
                yield LineBatch(rng.path, rng.shard, seq, category, offsets, lines, category_error)
    except (OSError, EOFError, zlib.error) as err:
        raise FileError(describe_read_error(err)) from None


class _Progress:
    """Per-process progress line on long runs, at most every `every` seconds."""

    def __init__(self, every: float = PROGRESS_EVERY) -> None:
        self.every = every
        self.log = _progress_logger()
        self.started = self.last = time.monotonic()
        self.lines = self.bytes = self.ranges = 0

    def add(self, lines: int, nbytes: int) -> None:
        self.lines += lines
        self.bytes += nbytes
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            rate = self.lines / max(now - self.started, 1e-9)
            self.log.info(
                "%d ranges done, %s lines, %.0f MB, %s lines/s",
                self.ranges, f"{self.lines:,}", self.bytes / 1e6, f"{rate:,.0f}",
            )


class _ReadRangesDoFn(beam.DoFn):
    def __init__(self, block_bytes: int, progress_dir: str | None = None) -> None:
        self._block_bytes = block_bytes
        self._lines = Metrics.counter("dpipe.read", "lines_read")
        self._bytes = Metrics.counter("dpipe.read", "bytes_read")
        self._progress: _Progress | None = None
        self._progress_dir = progress_dir
        self._bar: ProgressFiles | None = None

    def setup(self) -> None:
        self._progress = _Progress()
        self._bar = ProgressFiles(self._progress_dir) if self._progress_dir else None

    def process(self, rng: FileRange) -> Iterator[LineBatch | beam.pvalue.TaggedOutput]:
        lines_read = bytes_read = 0
        failure = None
        try:
            for batch in read_range(rng, self._block_bytes):
                n = len(batch.lines)
                nbytes = sum(map(len, batch.lines)) + n
                lines_read += n
                bytes_read += nbytes
                self._lines.inc(n)
                self._bytes.inc(nbytes)
                if self._progress:
                    self._progress.add(n, nbytes)
                if self._bar:  # a compressed range counts whole at its end (its compressed position is unknown)
                    self._bar.add(nbytes if rng.end is not None else 0, n)
                yield batch
        except FileError as err:  # reported per file; the lines read before it go on, the other files too
            failure = str(err)
        if self._progress:
            self._progress.ranges += 1
        if self._bar:
            if rng.end is None:
                with contextlib.suppress(Exception):
                    self._bar.add(FileSystems.match([rng.path])[0].metadata_list[0].size_in_bytes, 0)
            self._bar.flush()
        stats: dict = {"lines_read": lines_read, "bytes_read": bytes_read, "files_read": int(rng.start == 0)}
        if failure is not None:
            stats["file_errors"] = {rng.path: {failure: lines_read}}
        yield beam.pvalue.TaggedOutput(STATS, stats)


COMPRESSED_EXPANSION = 5
"""How many bytes a compressed byte of log text is about worth; only orders the ranges (plan_inputs)."""


def plan_inputs(patterns: list[str], chunk_bytes: int, largest_first: bool = False) -> list[FileRange]:
    """Every file the globs match, once (two globs may match one file), cut into ranges: in the order the
    globs list them, or with `largest_first` from the largest range down.

    Planned where the pipeline is built, as `check_inputs` lists them anyway: the pipeline starts with the
    (tiny) range descriptors instead of matching, deduplicating and planning in three stages of its own.
    The local runner deals a stage's input out to its workers in turn, in order: largest first evens out the
    bytes each worker reads. One worker keeps the listing order, which order-sensitive results (an alarm's
    first samples) follow.
    """
    sizes: dict[str, int] = {}
    for pattern in patterns:
        for result in FileSystems.match([pattern]):
            for m in result.metadata_list:
                sizes.setdefault(m.path, m.size_in_bytes)
    ranges = [r for path, size in sizes.items() for r in plan_ranges(path, size, chunk_bytes)]
    if not largest_first:
        return ranges

    def size(r: FileRange) -> int:
        if r.end is not None:
            return r.end - r.start
        return sizes[r.path] * (COMPRESSED_EXPANSION if is_compressed(r.path) else 1)

    return sorted(ranges, key=size, reverse=True)


class ReadArchives(beam.PTransform):
    """Globs -> LineBatch (main output) and per-range read statistics (output `stats`)."""

    def __init__(self, patterns: list[str], chunk_bytes: int = 16 << 20, block_bytes: int = 4 << 20,
                 progress_dir: str | None = None, largest_first: bool = False) -> None:
        super().__init__()
        self._patterns = list(patterns)
        self._largest_first = largest_first  # several workers: see plan_inputs
        self._chunk_bytes = chunk_bytes
        self._block_bytes = block_bytes
        self._progress_dir = progress_dir  # a local folder for the driver's progress bar (connectors.progress)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.pvalue.DoOutputsTuple:
        ranges = plan_inputs(self._patterns, self._chunk_bytes, self._largest_first)
        return (
            pbegin
            | "Ranges" >> beam.Create(ranges, reshuffle=False)
            | "SpreadRanges" >> beam.Reshuffle()
            | "ReadRanges"
            >> beam.ParDo(_ReadRangesDoFn(self._block_bytes, self._progress_dir))
            .with_output_types(LineBatch)
            .with_outputs(STATS, main="lines")
        )
