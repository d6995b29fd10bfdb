"""Where the stream's spool reader finds the spool: a local (or mounted) directory, or a URL of Beam's
filesystems (`s3://`, `hdfs://`) to which the gateway ships sealed segments (`connectors/spool_ship.py`).

The reader (`connectors/spool_source.py`) does everything it does to segments and to its own files through
one `SpoolStore` (docs/architecture.md, "Where the spool lives"):

    segments()                 the segments, by seq (a URL holds sealed ones only: `URL/segments/`)
    read_lines / size          complete lines of a segment from an offset; its size
    sealed(segment)            the sealed twin of an `.open` segment, once the writer renamed it
    delete_segment             finalize's delete (a missing one is no error)
    read / exists / delete     the reader's small files by name (`reader/replay.json`, `drain`)
    write_atomic               a small file replaced whole (never seen half written)
    journal(name)              the cuts journal: append, sync, rewrite

`LocalStore` is the spool directory exactly as before (same calls, same bytes). `FileSystemsStore` works on
any Beam filesystem. An object store has no rename and no append: a small file is written in one request
(`s3://`, `gs://`: an object is visible only whole), elsewhere under `.tmp` and renamed; the journal is a
base file plus one part per append (`reader/cuts.d/`), folded into the base when it is rewritten. The
shipper never writes into `URL/segments/` but whole copies (`URL/partial/<name>` first), so what the reader
lists is complete.
"""

from __future__ import annotations

import contextlib
import os
import re
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, BinaryIO

from connectors.gateway.spool import (
    SEALED,
    SEGMENT_NAME,
    SEGMENTS,
    Segment,
    list_segments,
    read_lines,
    read_lines_from,
)

PARTIAL = "partial"
"""`URL/partial/`: where the shipper uploads a segment before it copies it into `URL/segments/`."""
OBJECT_STORES = ("s3", "gs", "azfs")
"""Schemes whose objects appear only whole: a small file is written in place, without a rename."""
_PART = re.compile(r"\d{16}")


def is_url(spool: str | Path) -> bool:
    """`s3://bucket/spool` (any scheme of Beam's filesystems) rather than a path."""
    return re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", str(spool)) is not None


class Journal(ABC):
    """An append-only file of lines that a crash keeps up to the last append."""

    @abstractmethod
    def read(self) -> bytes:
        """Everything appended so far (b"" for a new journal)."""

    @abstractmethod
    def append(self, data: bytes) -> None: ...

    @abstractmethod
    def sync(self) -> None:
        """Make every append durable (a kill -9 keeps them anyway; power loss may not)."""

    @abstractmethod
    def rewrite(self, data: bytes) -> None:
        """Replace the whole journal by `data`, atomically."""

    @abstractmethod
    def close(self) -> None: ...


class SpoolStore(ABC):
    """The spool as its reader sees it (module docstring). Names of the reader's files are relative to the
    spool's root, with `/` (`reader/replay.json`)."""

    root: str

    @abstractmethod
    def segments(self) -> list[Segment]: ...

    @abstractmethod
    def read_lines(self, segment: Segment, start: int, max_bytes: int) -> tuple[list[tuple[int, bytes]], int]:
        """As `connectors.gateway.spool.read_lines`; FileNotFoundError once the segment is gone."""

    @abstractmethod
    def size(self, segment: Segment) -> int:
        """FileNotFoundError once the segment is gone."""

    @abstractmethod
    def sealed(self, segment: Segment) -> Segment | None:
        """The sealed segment an `.open` one became, if it exists now."""

    @abstractmethod
    def delete_segment(self, segment: Segment) -> None: ...

    @abstractmethod
    def where(self, segment: Segment) -> str:
        """The segment's path or URL, for log lines."""

    @abstractmethod
    def read(self, name: str) -> bytes:
        """FileNotFoundError when there is no such file."""

    @abstractmethod
    def exists(self, name: str) -> bool: ...

    @abstractmethod
    def write_atomic(self, name: str, data: bytes) -> None: ...

    @abstractmethod
    def delete(self, name: str) -> None:
        """A missing file is no error."""

    @abstractmethod
    def journal(self, name: str) -> Journal: ...

    def replace(self, source: str, target: str) -> None:
        """Move a small file onto another name; FileNotFoundError when `source` is missing."""
        self.write_atomic(target, self.read(source))
        self.delete(source)


# ---- a local or mounted directory: the spool as it always was ----


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(".tmp")
    with open(temp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)


class _FileJournal(Journal):
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: BinaryIO | None = None

    def read(self) -> bytes:
        try:
            return self.path.read_bytes()
        except FileNotFoundError:
            return b""

    def append(self, data: bytes) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 (kept open: one write per batch)
        self._file.write(data)

    def sync(self) -> None:
        if self._file is not None:
            os.fsync(self._file.fileno())

    def rewrite(self, data: bytes) -> None:
        self.close()
        _write_atomic(self.path, data)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class LocalStore(SpoolStore):
    """The spool directory on this host (or a mount every reader sees at the same path)."""

    def __init__(self, root: str | Path) -> None:
        self.root = str(root)
        self._path = Path(root)

    def segments(self) -> list[Segment]:
        return list_segments(self._path)

    def read_lines(self, segment: Segment, start: int, max_bytes: int) -> tuple[list[tuple[int, bytes]], int]:
        return read_lines(segment.path, start, max_bytes)

    def size(self, segment: Segment) -> int:
        return segment.path.stat().st_size

    def sealed(self, segment: Segment) -> Segment | None:
        path = segment.path.with_suffix(SEALED)
        return Segment(segment.seq, segment.category, path, True) if path.exists() else None

    def delete_segment(self, segment: Segment) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(segment.path)

    def where(self, segment: Segment) -> str:
        return str(segment.path)

    def read(self, name: str) -> bytes:
        return (self._path / name).read_bytes()

    def exists(self, name: str) -> bool:
        return os.path.exists(os.path.join(self.root, name))

    def write_atomic(self, name: str, data: bytes) -> None:
        _write_atomic(self._path / name, data)

    def delete(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path / name)

    def replace(self, source: str, target: str) -> None:
        os.replace(self._path / source, self._path / target)

    def journal(self, name: str) -> Journal:
        return _FileJournal(self._path / name)


# ---- a URL of Beam's filesystems ----


class _PartsJournal(Journal):
    """A journal where nothing appends: `name` (the base) and `name.d/<n>`, one small file per append."""

    def __init__(self, store: FileSystemsStore, name: str) -> None:
        self.store, self.name, self.parts = store, name, f"{name}.d"
        self._next: int | None = None

    def _listed(self) -> list[str]:
        names = self.store.list(self.parts)
        parts = sorted(n for n in names if _PART.fullmatch(n))
        self._next = int(parts[-1]) + 1 if parts else 0
        return parts

    def read(self) -> bytes:
        try:
            base = self.store.read(self.name)
        except FileNotFoundError:
            base = b""
        return base + b"".join(self.store.read(f"{self.parts}/{p}") for p in self._listed())

    def append(self, data: bytes) -> None:
        if self._next is None:
            self._listed()
        assert self._next is not None
        self.store.write_atomic(f"{self.parts}/{self._next:016d}", data)  # durable once written
        self._next += 1

    def sync(self) -> None:
        """Every append is durable already."""

    def rewrite(self, data: bytes) -> None:
        """The base first, then the parts it holds: a crash between leaves lines twice, which a reader of the
        journal takes as once."""
        parts = self._listed()
        self.store.write_atomic(self.name, data)
        for part in parts:
            self.store.delete(f"{self.parts}/{part}")
        self._next = 0

    def close(self) -> None:
        """Nothing is held open."""


class FileSystemsStore(SpoolStore):
    """The spool at a URL of Beam's filesystems, as the gateway's shipper leaves it: `URL/segments/` holds
    sealed segments only. Picklable (it goes with the source to the SDK workers); the filesystem, with the
    options the worker was given (S3 endpoint and keys), is looked up where it is used."""

    def __init__(self, root: str) -> None:
        self.root = root.rstrip("/")

    @property
    def _fs(self) -> Any:
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.get_filesystem(self.root)

    def url(self, name: str) -> str:
        return f"{self.root}/{name}"

    def list(self, folder: str) -> list[str]:
        """The names of the files directly in `folder`."""
        prefix = self.url(folder) + "/"
        found = self._fs.match([prefix + "*"])[0].metadata_list
        return [m.path[len(prefix):] for m in found if "/" not in m.path[len(prefix):]]

    def segments(self) -> list[Segment]:
        found = []
        for name in self.list(SEGMENTS):
            match = SEGMENT_NAME.fullmatch(name)
            if match and match[3] == SEALED:
                found.append(Segment(int(match[1]), match[2], Path(SEGMENTS, name), True))
        return sorted(found, key=lambda s: s.seq)

    def _open(self, name: str) -> BinaryIO:
        from apache_beam.io.filesystem import CompressionTypes

        try:
            return self._fs.open(self.url(name), compression_type=CompressionTypes.UNCOMPRESSED)
        except FileNotFoundError:
            raise
        except Exception:
            if not self._fs.exists(self.url(name)):
                raise FileNotFoundError(self.url(name)) from None
            raise

    def read_lines(self, segment: Segment, start: int, max_bytes: int) -> tuple[list[tuple[int, bytes]], int]:
        with self._open(segment.path.as_posix()) as f:
            return read_lines_from(f, start, max_bytes)

    def size(self, segment: Segment) -> int:
        return self.size_of(segment.path.as_posix())

    def size_of(self, name: str) -> int:
        """FileNotFoundError when there is no such file."""
        try:
            return int(self._fs.size(self.url(name)))
        except Exception:
            if not self._fs.exists(self.url(name)):
                raise FileNotFoundError(self.url(name)) from None
            raise

    def sealed(self, segment: Segment) -> Segment | None:
        return segment if segment.sealed and self.exists(segment.path.as_posix()) else None

    def delete_segment(self, segment: Segment) -> None:
        self.delete(segment.path.as_posix())

    def where(self, segment: Segment) -> str:
        return self.url(segment.path.as_posix())

    def read(self, name: str) -> bytes:
        with self._open(name) as f:
            return f.read()

    def exists(self, name: str) -> bool:
        return bool(self._fs.exists(self.url(name)))

    def write_atomic(self, name: str, data: bytes) -> None:
        self.write(name, data, atomic=True)

    def write(self, name: str, data: bytes | BinaryIO, atomic: bool = False) -> None:
        """Write `name` from bytes or a file; `atomic`: never seen half written (module docstring)."""
        from apache_beam.io.filesystem import CompressionTypes

        if data == b"":
            data = b"\n"  # Beam's S3 upload cannot complete an empty object; readers of these skip blank lines
        direct = not atomic or self.root.split("://", 1)[0].lower() in OBJECT_STORES
        target = self.url(name) if direct else self.url(name + ".tmp")
        with self._fs.create(target, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            if isinstance(data, bytes):
                f.write(data)
            else:
                while chunk := data.read(1 << 22):
                    f.write(chunk)
        if not direct:
            self.delete(name)
            self._fs.rename([target], [self.url(name)])

    def copy(self, source: str, target: str) -> None:
        self._fs.copy([self.url(source)], [self.url(target)])

    def delete(self, name: str) -> None:
        from apache_beam.io.filesystem import BeamIOError

        with contextlib.suppress(BeamIOError, FileNotFoundError):
            self._fs.delete([self.url(name)])

    def journal(self, name: str) -> Journal:
        return _PartsJournal(self, name)


def open_store(spool: str | Path) -> SpoolStore:
    """The store of a spool path or URL."""
    return FileSystemsStore(str(spool)) if is_url(spool) else LocalStore(spool)

