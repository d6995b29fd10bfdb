"""The HTTP gateway's Pub/Sub sink: one message per line, attribute `category`, to `projects/P/topics/T`.

`append` returns once every publish of the call is acknowledged by Pub/Sub (durable there), so the gateway can
answer its client; `full()` is the back-pressure signal (too many publishes in flight). google-cloud-pubsub
batches the publishes of concurrent appends together; it honours PUBSUB_EMULATOR_HOST (tests, local runs).
"""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

TOPIC_PATH = re.compile(r"projects/[^/]+/topics/[^/]+")

# Batches for throughput: up to 1000 messages or 1 MB per request, and at most 20 ms of added latency.
DEFAULT_MAX_MESSAGES = 1000
DEFAULT_MAX_BYTES = 1_000_000
DEFAULT_MAX_LATENCY = 0.02


class PubSubSink:
    """A LineSink publishing to one Pub/Sub topic."""

    def __init__(self, topic: str, *, max_in_flight: int = 20_000, max_in_flight_bytes: int = 64 << 20,
                 max_messages: int = DEFAULT_MAX_MESSAGES, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_latency: float = DEFAULT_MAX_LATENCY, publisher: Any = None) -> None:
        if not TOPIC_PATH.fullmatch(topic):
            raise ValueError(f"topic must be projects/PROJECT/topics/TOPIC, not {topic!r}")
        if publisher is None:
            from google.cloud import pubsub_v1

            batch = pubsub_v1.types.BatchSettings(max_bytes=max_bytes, max_latency=max_latency,
                                                  max_messages=max_messages)
            publisher = pubsub_v1.PublisherClient(batch_settings=batch)
        self.topic = topic
        self._publisher = publisher
        self._max_in_flight = max_in_flight
        self._max_in_flight_bytes = max_in_flight_bytes
        self._lock = threading.Lock()  # the publish callbacks run on the client's threads
        self._in_flight = 0
        self._in_flight_bytes = 0
        self._published = 0
        self._published_bytes = 0
        self._failed = 0
        self._appends: set[asyncio.Future[None]] = set()
        self._closed = False

    async def append(self, category: str, lines: list[bytes], key: str | None = None) -> bool:
        """Publishes every line; returns when all are acknowledged, raises if any publish failed. The
        idempotency key is not kept: Pub/Sub delivers at least once, so a retry publishes again."""
        if self._closed:
            raise RuntimeError(f"PubSubSink({self.topic}) is closed")
        if not lines:
            return True
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._appends.add(done)
        left = [len(lines)]
        errors: list[BaseException] = []

        def settled(size: int, error: BaseException | None) -> None:
            with self._lock:
                self._in_flight -= 1
                self._in_flight_bytes -= size
                if error is None:
                    self._published += 1
                    self._published_bytes += size
                else:
                    self._failed += 1
                    errors.append(error)
                left[0] -= 1
                last = left[0] == 0
            if last:
                loop.call_soon_threadsafe(_resolve, done, errors, len(lines), self.topic)

        def publish_all() -> None:
            for line in lines:
                with self._lock:
                    self._in_flight += 1
                    self._in_flight_bytes += len(line)
                try:
                    future = self._publisher.publish(self.topic, line, category=category)
                except Exception as e:  # e.g. a message over the 10 MB limit: that line fails, the rest go on
                    settled(len(line), e)
                    continue
                future.add_done_callback(_callback(settled, len(line)))

        try:
            # publish() costs tens of µs a line: keep big appends off the event loop
            await asyncio.to_thread(publish_all)
            await done
        finally:
            self._appends.discard(done)
        return True

    def full(self) -> bool:
        """Too many unacknowledged publishes: the gateway should answer 503 / slow down."""
        with self._lock:
            return self._in_flight >= self._max_in_flight or self._in_flight_bytes >= self._max_in_flight_bytes

    def healthy(self) -> bool:
        """Open: the client publishes (a failed publish fails its request, not the sink)."""
        return not self._closed

    def stats(self) -> dict[str, float]:
        with self._lock:
            return {"in_flight": self._in_flight, "in_flight_bytes": self._in_flight_bytes,
                    "published": self._published, "published_bytes": self._published_bytes,
                    "failed": self._failed}

    async def close(self) -> None:
        """Waits for the appends under way, then stops the client (it sends what is still batched)."""
        if self._closed:
            return
        self._closed = True
        await asyncio.gather(*self._appends, return_exceptions=True)
        await asyncio.to_thread(self._publisher.stop)
        transport = getattr(self._publisher, "transport", None)
        if transport is not None:
            transport.close()


def _callback(settled: Any, size: int) -> Any:
    return lambda future: settled(size, future.exception())


def _resolve(done: asyncio.Future[None], errors: list[BaseException], total: int, topic: str) -> None:
    if done.done():
        return
    if errors:
        done.set_exception(RuntimeError(f"{len(errors)} of {total} publishes to {topic} failed: {errors[0]!r}"))
    else:
        done.set_result(None)
