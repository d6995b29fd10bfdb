"""A real Pub/Sub server for tests: Google's in-memory `pstest` (built by `make tools` from
tests/servers/pstest) on 127.0.0.1, started and stopped by PID.

google-cloud-pubsub and Beam's Pub/Sub IO reach it through PUBSUB_EMULATOR_HOST (`env()`); the helpers here
talk to it over an explicit insecure channel, so they need no environment.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

from tests.servers import LocalServer, jvm
from tests.servers.prism import BIN


def pstest_path() -> Path:
    path = BIN / "pstest"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `make tools` (builds pstest with Go from the module proxy)")
    return path


class PubSubServer(LocalServer):
    """`pstest -port PORT` in a subprocess; `host`, `env()`, topic/subscription/publish/pull helpers."""

    name = "pstest"

    def __init__(self) -> None:
        super().__init__()
        self._clients: tuple[Any, Any] | None = None

    def command(self) -> list[str]:
        return [str(pstest_path()), "-port", str(self.port)]

    def probe(self) -> None:
        self._api()[0].list_topics(project="projects/ready", timeout=2, retry=None)  # one try: the loop retries

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What google-cloud-pubsub (and so Beam's ReadFromPubSub) needs to talk to this server."""
        return {"PUBSUB_EMULATOR_HOST": self.host}

    def start(self, log: Path, timeout: float = 30) -> None:
        self._log = log.open("wb")
        self._proc = subprocess.Popen([str(pstest_path()), "-port", str(self.port)], stdout=self._log,
                                      stderr=subprocess.STDOUT, preexec_fn=jvm.pdeathsig_preexec())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"pstest exited ({self._proc.returncode}): {log.read_text()[-2000:]}")
            try:
                self._api()[0].list_topics(project="projects/ready", timeout=2, retry=None)  # one try: the loop retries
                return
            except Exception:  # not listening yet: the client raises ServiceUnavailable / DeadlineExceeded
                self._clients = None  # a fresh channel next time: a channel broken by a fork never recovers
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"pstest did not answer on {self.host} within {timeout} s")

    def _api(self) -> tuple[Any, Any]:
        """Plain GAPIC publisher and subscriber clients on an insecure channel to this server (no batching)."""
        if self._clients is None:
            import grpc
            from google.pubsub_v1 import PublisherClient, SubscriberClient
            from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
            from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

            publisher = PublisherClient(transport=PublisherGrpcTransport(channel=grpc.insecure_channel(self.host)))
            subscriber = SubscriberClient(transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(self.host)))
            self._clients = (publisher, subscriber)
        return self._clients

    def create_topic(self, project: str, topic: str) -> str:
        path = f"projects/{project}/topics/{topic}"
        self._api()[0].create_topic(name=path)
        return path

    def create_subscription(self, project: str, topic: str, sub: str, ack_deadline: int = 60) -> str:
        """An explicit ack deadline: reading by topic alone failed against an old pstest (real-servers.md)."""
        path = f"projects/{project}/subscriptions/{sub}"
        self._api()[1].create_subscription(name=path, topic=f"projects/{project}/topics/{topic}",
                                           ack_deadline_seconds=ack_deadline)
        return path

    def publish(self, project: str, topic: str, data: bytes, **attrs: str) -> str:
        """Publishes one message synchronously; its message id."""
        response = self._api()[0].publish(topic=f"projects/{project}/topics/{topic}",
                                          messages=[{"data": data, "attributes": attrs}])
        return response.message_ids[0]

    def pull(self, project: str, sub: str, max_messages: int = 1000, timeout: float = 5) -> list[tuple[bytes, dict]]:
        """Pulls what is there now (at most max_messages), acks it: [(data, attributes)]."""
        subscriber = self._api()[1]
        path = f"projects/{project}/subscriptions/{sub}"
        response = subscriber.pull(subscription=path, max_messages=max_messages, timeout=timeout)
        received = response.received_messages
        if received:
            subscriber.acknowledge(subscription=path, ack_ids=[m.ack_id for m in received])
        return [(m.message.data, dict(m.message.attributes)) for m in received]

    def stop(self) -> None:
        if self._clients is not None:
            for client in self._clients:
                client.transport.close()
            self._clients = None
        super().stop()
