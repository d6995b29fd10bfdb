"""The checkpoint file: where each followed file is acknowledged up to, and which ranges were sent.

    {"version": 1, "files": [{"id": "801.1a2b.2f.9c0ffee0", "dev": 2049, "ino": 6699, "length": 47,
      "crc": 2617245408, "path": "/var/log/app/pv.0.log", "source": "app", "offset": 1048576,
      "sent": [[1048576, 2097152, false], [2097152, 3145728, true]]}]}

`offset`: every byte before it got a 200 (or was skipped). `sent`: the batches after it that were POSTed, with
whether their 200 came; a batch is recorded here *before* its first POST. After a crash the collector sends the
unanswered ranges again, with the same Idempotency-Keys, and counts their lines as `lines_replayed_total`:
those, and only those, may be in the spool twice. It is written atomically (temporary file, fsync, rename,
fsync of the folder), in a thread, coalescing the requests that arrive during a write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from connectors.collector.metrics import Metrics
from pipelines.validation import ConfigError

log = logging.getLogger("dpipe.collector")
VERSION = 1


def load_checkpoint(path: Path) -> list[dict[str, Any]] | None:
    """The files of the checkpoint, or None when there is none yet (the collector's first start)."""
    try:
        data = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the checkpoint ({err}); move it away to start over "
                          "(files are then read as read_from says)") from None
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise ConfigError(f"{path}: not a version {VERSION} collector checkpoint")
    try:
        return [_SavedFile.model_validate(f, strict=True).model_dump() for f in data["files"]]
    except (KeyError, TypeError, ValidationError) as err:
        raise ConfigError(f"{path}: a damaged collector checkpoint ({type(err).__name__}: {str(err).splitlines()[0]}); "
                          "move it away to start over (files are then read as read_from says)") from None


class _SavedFile(BaseModel):
    """One followed file of the checkpoint (see the module docstring): a damaged entry is refused at start."""

    model_config = ConfigDict(extra="forbid")

    id: str
    dev: int
    ino: int
    length: int
    crc: int
    path: str
    source: str
    offset: Annotated[int, Field(ge=0)]
    sent: list[tuple[int, int, bool]]


def _write(path: Path, data: bytes, fsync: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if fsync:
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


class CheckpointStore:
    """Writes `snapshot()` to `path` whenever asked; `durable()` waits for a write that began after the call."""

    def __init__(self, path: Path, fsync: bool, snapshot: Callable[[], list[dict[str, Any]]],
                 metrics: Metrics) -> None:
        self.path = path
        self.fsync = fsync
        self.snapshot = snapshot
        self.metrics = metrics
        self._requested = 0
        self._written = 0
        self._wake = asyncio.Event()
        self._changed = asyncio.Condition()
        path.parent.mkdir(parents=True, exist_ok=True)

    def request(self) -> None:
        """Something changed: write a new checkpoint soon."""
        self._requested += 1
        self._wake.set()

    async def durable(self) -> None:
        self.request()
        target = self._requested
        async with self._changed:
            await self._changed.wait_for(lambda: self._written >= target)

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            target = self._requested
            data = orjson.dumps({"version": VERSION, "files": self.snapshot()})
            try:
                await asyncio.to_thread(_write, self.path, data, self.fsync)
            except OSError as err:  # e.g. disk full: nothing new is sent until a checkpoint can be written
                log.error("collector: cannot write the checkpoint %s: %s; retrying", self.path, err)
                await asyncio.sleep(1)
                self._wake.set()
                continue
            self.metrics.inc("checkpoints_written_total")
            async with self._changed:
                self._written = target
                self._changed.notify_all()

    async def flush(self) -> None:
        """Write the current state now (at shutdown)."""
        data = orjson.dumps({"version": VERSION, "files": self.snapshot()})
        with contextlib.suppress(OSError):
            await asyncio.to_thread(_write, self.path, data, self.fsync)
