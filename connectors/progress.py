"""A backfill's progress bar on a terminal: input bytes done of the total, lines/s and ETA.

The read workers (local processes of the same machine) each write what they have done to a small file in a
folder the driver gave them (`ProgressFiles`); the driver sums those files twice a second and redraws one
line (`ProgressBar`). Plain files count as they are read; a compressed file counts whole once read, since
its compressed position is not known. The periodic progress lines of `connectors.archives` stay for logs.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from pathlib import Path
from typing import TextIO

import orjson


def progress_line(done: int, total: int, lines: int, elapsed_s: float, width: int = 28) -> str:
    """`[#######.....]  45%  120.0/266.0 MB  85,000 lines/s  ETA 0:12`: the pure rendering."""
    fraction = min(done / total, 1.0) if total > 0 else 0.0
    filled = round(fraction * width)
    rate = lines / elapsed_s if elapsed_s > 0 else 0.0
    eta = "--:--"
    if 0 < fraction < 1 and elapsed_s > 0:
        left = int(elapsed_s * (1 - fraction) / fraction)
        eta = f"{left // 60}:{left % 60:02d}"
    elif fraction >= 1:
        eta = "0:00"
    return (f"[{'#' * filled}{'.' * (width - filled)}] {fraction:4.0%}  {done / 1e6:,.1f}/{total / 1e6:,.1f} MB  "
            f"{rate:,.0f} lines/s  ETA {eta}")


class ProgressFiles:
    """Worker side: this process's input bytes and lines done, in `folder/<pid>-<id>.json`, at most every
    `every` seconds (and on `flush`)."""

    def __init__(self, folder: str, every: float = 0.5) -> None:
        self._path = Path(folder) / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
        self._every, self._last = every, time.monotonic()
        self.done = self.lines = 0

    def add(self, done: int, lines: int) -> None:
        self.done += done
        self.lines += lines
        if time.monotonic() - self._last >= self._every:
            self.flush()

    def flush(self) -> None:
        self._last = time.monotonic()
        temp = self._path.with_suffix(".tmp")
        with contextlib.suppress(OSError):  # the driver may have finished and removed the folder
            temp.write_bytes(orjson.dumps({"done": self.done, "lines": self.lines}))
            os.replace(temp, self._path)


def read_progress(folder: str) -> tuple[int, int]:
    """Driver side: (input bytes done, lines) summed over every worker's file."""
    done = lines = 0
    for path in Path(folder).glob("*.json"):
        with contextlib.suppress(OSError, orjson.JSONDecodeError):
            data = orjson.loads(path.read_bytes())
            done, lines = done + data["done"], lines + data["lines"]
    return done, lines


class ProgressBar:
    """Redraws the bar on `stream` (a terminal) twice a second until stopped; `label` names the wave."""

    def __init__(self, folder: str, total: int, stream: TextIO, label: str = "") -> None:
        self.folder, self.total, self.stream, self.label = folder, total, stream, label
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True, name="progress-bar")

    def start(self) -> ProgressBar:
        self._thread.start()
        return self

    def _draw(self) -> None:
        done, lines = read_progress(self.folder)
        prefix = f"{self.label} " if self.label else ""
        self.stream.write("\r" + prefix + progress_line(done, self.total, lines, time.monotonic() - self._started))
        self.stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self._draw()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._draw()
        self.stream.write("\n")
        self.stream.flush()
