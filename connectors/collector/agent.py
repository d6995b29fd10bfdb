"""The collector: follow files, batch their lines, POST them, checkpoint what was acknowledged.

One asyncio loop runs: a discovery task (globs every `tail.glob_interval`), a read loop (every followed file in
turn, at most one block each per round, until `batch.max_buffer_bytes` are read and unacknowledged: then it
waits, so a gateway outage leaves the backlog in the files, not in memory), `batch.max_in_flight` senders, the
checkpoint writer and the metrics server. At-least-once: a file's checkpointed offset only passes bytes whose
batches (and every batch before them) got a 200; a batch is recorded as sent before its first POST, so a
restart knows exactly which lines may be in the spool already (`lines_replayed_total`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from connectors.collector.batcher import Batch, Batcher
from connectors.collector.checkpoint import CheckpointStore, load_checkpoint
from connectors.collector.config import CollectorConfig
from connectors.collector.lines import LineRules
from connectors.collector.metrics import Labels, Metrics
from connectors.collector.shipper import Shipper
from connectors.collector.tailer import (
    Block,
    Fingerprint,
    LongLine,
    TailedFile,
    find_inode,
    fingerprint,
    matching_paths,
    open_file,
)
from transforms.category import UnknownCategory, category_from_path

log = logging.getLogger("dpipe.collector")


class Collector:
    def __init__(self, config: CollectorConfig) -> None:
        self.config = config
        self.labels = [s.label for s in config.sources]
        self.metrics = Metrics(self.labels)
        self.files: dict[tuple[int, int], TailedFile] = {}
        self.queue: asyncio.Queue[Batch] = asyncio.Queue()
        rules = [LineRules.of(s, config.host, config.tail.max_line_bytes) for s in config.sources]
        self.batcher = Batcher(config.batch, rules, config.tail.dead_letter_category, config.host, self.metrics,
                               self.queue.put_nowait)
        self.store = CheckpointStore(config.checkpoints.path, config.checkpoints.fsync, self.snapshot, self.metrics)
        self.shipper = Shipper(config.gateways, config.retry, self.metrics, config.batch.max_in_flight)
        self.in_flight = 0
        self.metrics_port: int | None = None
        self._restored: dict[tuple[int, int], dict[str, Any]] = {}
        self._first_start = True
        self._unknown: set[str] = set()
        self._stop = asyncio.Event()
        self._room = asyncio.Event()  # set when an acknowledgement frees buffer space
        self._reading = True

    # ---- lifecycle ----

    def stop(self) -> None:
        self._stop.set()

    async def run(self, ready: Any = None) -> None:
        """Follow files until stop(); then drain what was read (up to `shutdown_timeout`) and checkpoint."""
        restored = load_checkpoint(self.config.checkpoints.path)
        self._first_start = restored is None
        self._restored = {(e["dev"], e["ino"]): e for e in restored or []}
        await self.shipper.start()
        self.discover(time.monotonic())
        self._recover_rotated(time.monotonic())
        runner = await self._serve_metrics()
        tasks = [asyncio.create_task(self.store.run(), name="checkpoint"),
                 asyncio.create_task(self._discovery_loop(), name="discovery"),
                 asyncio.create_task(self._read_loop(), name="read"),
                 asyncio.create_task(self._status_loop(), name="status"),
                 *(asyncio.create_task(self._sender(), name=f"sender-{n}")
                   for n in range(self.config.batch.max_in_flight))]
        self.store.request()
        log.info("collector: following %d files of %d sources; gateways %s", len(self.files), len(self.labels),
                 ", ".join(self.shipper.urls))
        if ready is not None:
            ready(self)
        try:
            stop = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stop:
                    task.result()  # a crashed task: raise it
            await self._drain()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.store.flush()
            for f in self.files.values():
                f.close()
            await self.shipper.close()
            if runner is not None:
                await runner.cleanup()
        log.info("collector: stopped; %s", self.status())

    async def _drain(self) -> None:
        """Stop reading, send what was read, wait for the answers (up to shutdown_timeout)."""
        self._reading = False
        self.batcher.seal_all()
        deadline = time.monotonic() + self.config.shutdown_timeout
        while any(f.outstanding for f in self.files.values()) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        pending = sum(b.lines for f in self.files.values() for b in f.outstanding if not b.done)
        if pending:
            log.warning("collector: %d lines read but not acknowledged at shutdown; they are sent again at the "
                        "next start", pending)

    # ---- files ----

    def discover(self, now: float) -> None:
        """Follow new files matching the globs; note the followed files no glob matches any more."""
        seen: set[tuple[int, int]] = set()
        for index, source in enumerate(self.config.sources):
            for path, key in matching_paths(source.paths, source.exclude).items():
                if key in seen:
                    continue
                seen.add(key)
                known = self.files.get(key)
                if known is not None:
                    known.path, known.gone_since = path, None  # renamed from one matched path to another
                elif path not in self._unknown:
                    self._track(index, path, now)
        for f in self.files.values():
            if f.key not in seen and f.gone_since is None:
                f.gone_since = now
                self.metrics.inc("files_rotated_total")
                log.info("collector: %s was rotated away; reading it to its end", f.path)

    def _track(self, index: int, path: str, now: float, gone: bool = False) -> None:
        source = self.config.sources[index]
        category = source.category
        if category == "auto":
            try:
                category = category_from_path(path)
            except UnknownCategory as err:
                self._unknown.add(path)
                self.metrics.inc("files_unknown_category_total")
                log.error("collector: %s: %s; not followed (give the source a fixed category)", path, err)
                return
        fd = open_file(path)
        if fd is None:
            return
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) in self.files:  # replaced between the glob and the open: seen next round
            os.close(fd)
            return
        fp, position, sent = fingerprint(fd), 0, []
        entry = self._restored.pop((st.st_dev, st.st_ino), None)
        if entry is not None:
            known = Fingerprint(entry["dev"], entry["ino"], entry["length"], entry["crc"])
            if known.matches(fd):
                fp, position, sent = known, entry["offset"], entry["sent"]
            else:
                log.info("collector: %s reuses the inode of a file of the last run; reading it from 0", path)
        elif self._first_start and source.read_from == "end":
            fp, position = fingerprint(fd, force=True), st.st_size
        f = TailedFile(index, path, fd, category, position, fp)
        f.last_read = now
        if gone:
            f.gone_since = now
        self.files[f.key] = f
        if sent:
            self._replay(f, sent, now)

    def _recover_rotated(self, now: float) -> None:
        """Files of the checkpoint that no glob matches now were rotated while the collector was down: find
        them by inode in their folder and read them to their end."""
        for (dev, ino), entry in list(self._restored.items()):
            path = find_inode(entry["path"], dev, ino)
            index = self.labels.index(entry["source"]) if entry["source"] in self.labels else None
            if path is not None and index is not None:
                log.info("collector: %s was rotated to %s while the collector was stopped; reading it to its end",
                         entry["path"], path)
                self._track(index, path, now, gone=True)
            if (dev, ino) in self._restored:
                self._restored.pop((dev, ino))
                log.warning("collector: %s (followed by the last run) is gone; its unread end, if any, is lost",
                            entry["path"])
        self._restored = {}

    def _replay(self, f: TailedFile, sent: list[list[Any]], now: float) -> None:
        """Send again, with the same ranges and keys, what the last run sent without a checkpointed 200."""
        max_line = self.config.tail.max_line_bytes
        for start, end, done in sent:
            if start != f.pos:
                break
            if done:
                self.batcher.skip(f, start, end, now)
            else:
                data = os.pread(f.fd, min(end - start, max(self.config.batch.bytes, max_line) * 2), start)
                if end - start > len(data) and b"\n" not in data[:max_line + 1]:
                    block = Block(start, end, long=LongLine(start, data[:max_line], end - start - 1))
                elif len(data) != end - start:
                    log.warning("collector: %s is shorter than the last run's checkpoint; reading it from there",
                                f.path)
                    break
                elif data.endswith(b"\n"):
                    block = Block(start, end, data)
                else:
                    block = Block(start, end, data + b"\n", partial=True)
                self.batcher.add(f, block, now, replayed=True)
            f.pos = end

    async def _discovery_loop(self) -> None:
        while self._reading:
            await asyncio.sleep(self.config.tail.glob_interval)
            self.discover(time.monotonic())

    async def _read_loop(self) -> None:
        tail, batch = self.config.tail, self.config.batch
        buffer_bytes = batch.buffer_bytes
        while self._reading:
            now = time.monotonic()
            progressed = False
            for f in sorted(self.files.values(), key=lambda f: f.gone_since is None):  # rotated-away files first
                if self.batcher.buffered >= buffer_bytes:
                    break
                room_bytes, room_lines = self.batcher.room(f)
                flush = f.gone_since is not None and now - f.last_read >= tail.rotate_wait
                generation = f.generation
                block = f.read(max(room_bytes, tail.max_line_bytes + 1), room_lines, tail.max_line_bytes, now,
                               tail.partial_line_timeout, flush)
                if f.generation != generation:
                    self.metrics.inc("files_truncated_total")
                    self.batcher.seal(f)  # the old content's open batch is still sent, apart from the new offsets
                if block is not None:
                    f.last_read = now
                    self.batcher.add(f, block, now)
                    progressed = True
            self.batcher.seal_due(now)
            self._release(now)
            if self.batcher.buffered >= buffer_bytes:  # the files are the buffer: wait for acknowledgements
                self._room.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(tail.poll_interval):
                        await self._room.wait()
            else:
                await asyncio.sleep(0 if progressed else tail.poll_interval)

    def _release(self, now: float) -> None:
        """Close rotated-away or deleted files read to their end, all acknowledged, quiet for rotate_wait."""
        wait = self.config.tail.rotate_wait
        for f in [f for f in self.files.values() if f.gone_since is not None]:
            if now - f.last_read < wait or f.outstanding or f.key in self.batcher.open or not f.at_end():
                continue
            if f.pos < f.size or f.partial_since is not None:
                continue
            del self.files[f.key]
            f.close()
            self.metrics.inc("files_released_total")
            self.store.request()
            log.info("collector: released %s (read to its end, every line acknowledged)", f.path)

    # ---- sending ----

    async def _sender(self) -> None:
        while True:
            batch = await self.queue.get()
            batch.registered = True
            await self.store.durable()  # recorded as sent before the first POST: a restart knows it may repeat
            self.metrics.inc("lines_sent_total", batch.lines, source=self.labels[batch.source])
            self.in_flight += 1
            try:
                await self.shipper.send(batch, batch.body())
            finally:
                self.in_flight -= 1
            self.metrics.inc("lines_acked_total", batch.lines, source=self.labels[batch.source])
            self.batcher.acknowledge(batch)
            self._room.set()
            self.store.request()

    def snapshot(self) -> list[dict[str, Any]]:
        """The checkpoint: per fingerprinted file, the acknowledged offset and the ranges sent after it."""
        out = []
        for f in self.files.values():
            if f.fp is None:
                continue
            sent = []
            for batch in f.outstanding:
                if not batch.registered:
                    break
                sent.append([batch.start, batch.end, batch.done])
            out.append({"id": f.fp.id, "dev": f.fp.dev, "ino": f.fp.ino, "length": f.fp.length, "crc": f.fp.crc,
                        "path": f.path, "source": self.labels[f.source], "offset": f.acked, "sent": sent})
        return out

    # ---- self-monitoring ----

    def gauges(self) -> Iterator[tuple[str, Labels, float]]:
        yield "files_watched", (), len(self.files)
        for f in self.files.values():
            with contextlib.suppress(OSError):
                f.stat()
            yield "bytes_behind", (("file", f.path), ("source", self.labels[f.source])), max(0, f.size - f.acked)
        yield "buffered_bytes", (), self.batcher.buffered
        yield "requests_in_flight", (), self.in_flight
        for index, url in enumerate(self.shipper.urls):
            yield "gateway_active", (("url", url),), int(index == self.shipper.active)

    def status(self) -> str:
        m = self.metrics
        behind = sum(max(0, f.size - f.acked) for f in self.files.values())
        return (f"{len(self.files)} files, lines read {m.total('lines_read_total'):,} sent "
                f"{m.total('lines_sent_total'):,} acked {m.total('lines_acked_total'):,} replayed "
                f"{m.total('lines_replayed_total'):,}, {behind:,} bytes behind, {self.in_flight} in flight, "
                f"retries {m.total('retries_total'):,}, 429s {m.total('rate_limited_total'):,}, gateway "
                f"{self.shipper.urls[self.shipper.active]}")

    def log_status(self) -> None:
        log.info("collector: %s", self.status())

    async def _status_loop(self) -> None:
        interval = self.config.metrics.status_interval if self.config.metrics else 60.0
        while True:
            await asyncio.sleep(interval)
            self.log_status()

    async def _serve_metrics(self) -> web.AppRunner | None:
        settings = self.config.metrics
        if settings is None:
            return None

        async def metrics(_: web.Request) -> web.Response:
            return web.Response(text=self.metrics.render(self.gauges), content_type="text/plain")

        async def health(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok", "files": len(self.files)})

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", health)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, settings.host, settings.port, reuse_address=True).start()
        self.metrics_port = runner.addresses[0][1]
        log.info("collector: metrics on http://%s:%d/metrics", settings.host, self.metrics_port)
        return runner
