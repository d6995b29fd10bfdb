"""The gateway's Pub/Sub sink against a real Pub/Sub server (pstest), read back by Beam's ReadFromPubSub.

ReadFromPubSub runs on the Python BundleBasedDirectRunner (pinned: the default DirectRunner first tries Prism,
which rejects Python's Pub/Sub read, beam:transform:pubsub_read:v1). A streaming pipeline never ends by itself:
the test waits for every line, then cancels it.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState

from connectors.gateway.pubsub import PubSubSink
from tests.servers.pubsub import PubSubServer

pytestmark = pytest.mark.integration

PROJECT = "dpipe-test"  # Beam checks the project name's shape: 6 to 30 characters


@pytest.fixture(scope="module")
def pubsub(tmp_path_factory: pytest.TempPathFactory) -> Any:
    server = PubSubServer()
    server.start(tmp_path_factory.mktemp("pubsub") / "pstest.log")
    yield server
    server.stop()


@pytest.fixture
def emulator(pubsub: PubSubServer, monkeypatch: pytest.MonkeyPatch) -> PubSubServer:
    """PUBSUB_EMULATOR_HOST for google-cloud-pubsub clients made in this process: the sink's and Beam's."""
    for name, value in pubsub.env().items():
        monkeypatch.setenv(name, value)
    return pubsub


class NoteMessage(beam.DoFn):
    """Appends (line, category) to a file: the DirectRunner runs it in this process."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def process(self, message: Any) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps([message.data.decode(), message.attributes.get("category")]) + "\n")


def read_lines(path: Path) -> list[tuple[str, str]]:
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()] if path.exists() else []


def test_sink_lines_reach_a_streaming_pipeline_with_their_category(emulator: PubSubServer, tmp_path: Path) -> None:
    topic = emulator.create_topic(PROJECT, "lines")
    subscription = emulator.create_subscription(PROJECT, "lines", "beam")  # before publishing: pstest keeps no backlog
    sent = {"access": [f"access {i}".encode() for i in range(3000)],
            "phpError": [f"error {i}".encode() for i in range(2000)]}

    async def publish() -> dict[str, float]:
        sink = PubSubSink(topic)
        try:
            # concurrent appends, as the gateway makes them; the second one in two calls
            await asyncio.gather(sink.append("access", sent["access"]),
                                 sink.append("phpError", sent["phpError"][:1000]),
                                 sink.append("phpError", sent["phpError"][1000:]))
            assert not sink.full()
            return sink.stats()
        finally:
            await sink.close()

    stats = asyncio.run(publish())
    assert stats["published"] == 5000 and stats["failed"] == 0 and stats["in_flight"] == 0
    assert stats["published_bytes"] == sum(len(line) for lines in sent.values() for line in lines)

    out = tmp_path / "received.jsonl"
    p = beam.Pipeline(options=PipelineOptions(["--runner=BundleBasedDirectRunner", "--streaming"]))
    _ = (p
         | beam.io.ReadFromPubSub(subscription=subscription, with_attributes=True)
         | beam.ParDo(NoteMessage(out)))
    result = p.run()  # returns at once: the DirectRunner streams in background threads
    try:
        deadline = time.monotonic() + 60
        while len(read_lines(out)) < 5000 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)  # a redelivery would show up as an extra line
        assert result.state == PipelineState.RUNNING
    finally:
        result.cancel()  # wait_until_finish(duration=...) is NotImplementedError on this runner
    assert result.state == PipelineState.CANCELLED

    expected = Counter((line.decode(), category) for category, lines in sent.items() for line in lines)
    assert Counter(read_lines(out)) == expected


def test_sink_append_raises_when_the_topic_is_missing(emulator: PubSubServer) -> None:
    async def publish() -> dict[str, float]:
        sink = PubSubSink(f"projects/{PROJECT}/topics/missing")
        try:
            with pytest.raises(RuntimeError, match=r"3 of 3 publishes .* failed"):
                await sink.append("access", [b"a", b"b", b"c"])
            return sink.stats()
        finally:
            await sink.close()

    stats = asyncio.run(publish())
    assert stats["failed"] == 3 and stats["published"] == 0 and stats["in_flight"] == 0


def test_sink_is_full_while_publishes_are_in_flight(emulator: PubSubServer) -> None:
    topic = emulator.create_topic(PROJECT, "full")

    async def publish() -> tuple[bool, bool]:
        sink = PubSubSink(topic, max_in_flight=10, max_latency=0.5)  # the batch waits 0.5 s before it is sent
        try:
            append = asyncio.create_task(sink.append("access", [b"x"] * 10))
            while sink.stats()["in_flight"] < 10:
                await asyncio.sleep(0.01)
            during = sink.full()
            await append
            return during, sink.full()
        finally:
            await sink.close()

    assert asyncio.run(publish()) == (True, False)


def test_topic_path_is_checked() -> None:
    with pytest.raises(ValueError, match="projects/PROJECT/topics/TOPIC"):
        PubSubSink("lines")
