"""The gateway's shipper: sealed spool segments go to a URL of Beam's filesystems, where the stream's
workers read them (docs/architecture.md, "Where the spool lives").

Each sealed segment, in seq order (a category's segments arrive in order, so the reader never skips one), is
uploaded to `URL/partial/<name>`, copied to `URL/segments/<name>` (the reader lists only `segments/`, so it
never sees a partial upload), checked for its size, and only then deleted here, and its partial upload
removed. A failure is retried with exponential backoff, and later segments wait. A restart ships what is
left: a segment shipped whole before a crash but still here is found complete and not uploaded again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from pathlib import Path

from connectors.gateway.spool import Segment, list_segments
from connectors.spool_store import PARTIAL, FileSystemsStore

log = logging.getLogger("dpipe.ship")

POLL_SECONDS = 0.2
BACKOFF_SECONDS, MAX_BACKOFF_SECONDS = 0.5, 30.0


class Shipper:
    """Ships `spool_dir`'s sealed segments to `url` in a thread: `start()`, `stop()`, `stats()` for /metrics."""

    def __init__(self, spool_dir: str | Path, url: str, poll_s: float = POLL_SECONDS,
                 backoff_s: float = BACKOFF_SECONDS, max_backoff_s: float = MAX_BACKOFF_SECONDS) -> None:
        self.spool_dir, self.store = Path(spool_dir), FileSystemsStore(url)
        self.poll_s, self.backoff_s, self.max_backoff_s = poll_s, backoff_s, max_backoff_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._counters = {"ship_segments_total": 0, "ship_bytes_total": 0, "ship_failures_total": 0}
        self._backlog = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="spool-shipper", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """One last pass for what the writer sealed at its close (bounded by `timeout`), then stop; what is
        left is shipped at the next start."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def stats(self) -> dict[str, float]:
        return {**self._counters, "ship_backlog": self._backlog}

    def _run(self) -> None:
        delay = self.backoff_s
        while True:
            stopping = self._stop.is_set()
            try:
                self.ship_all()
                delay = self.backoff_s
            except Exception as err:  # the store is down or refuses: keep the segment, try again later
                self._counters["ship_failures_total"] += 1
                log.warning("ship: %s: %s; retrying in %g s", self.store.root, " ".join(str(err).split())[:300],
                            delay)
                if stopping or self._stop.wait(delay):
                    return
                delay = min(delay * 2, self.max_backoff_s)
                continue
            if stopping or self._stop.wait(self.poll_s):
                if stopping:
                    return
                continue  # stop was set while waiting: one last pass

    def ship_all(self) -> None:
        """Ship every sealed segment here, in seq order; raises at the first failure (it is retried first)."""
        sealed = [s for s in list_segments(self.spool_dir) if s.sealed]
        self._backlog = len(sealed)
        for segment in sealed:
            self.ship(segment)
            self._backlog -= 1

    def ship(self, segment: Segment) -> None:
        name = segment.path.name
        size = segment.path.stat().st_size
        target = f"segments/{name}"
        if not self._complete(target, size):
            with open(segment.path, "rb") as f:
                self.store.write(f"{PARTIAL}/{name}", f)
            self.store.copy(f"{PARTIAL}/{name}", target)
            if not self._complete(target, size):
                raise OSError(f"{self.store.url(target)} is not {size} bytes after its copy")
            self._counters["ship_segments_total"] += 1
            self._counters["ship_bytes_total"] += size
        self.store.delete(f"{PARTIAL}/{name}")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(segment.path)

    def _complete(self, name: str, size: int) -> bool:
        try:
            return self.store.size_of(name) == size
        except FileNotFoundError:
            return False
