"""Shared fixtures: a small generated archive, the pinned local runner, Prism, and in-process gateways."""

from __future__ import annotations

# isort: off
import pipelines  # noqa: F401  first: it turns gRPC's fork handlers off before Beam loads gRPC
# isort: on

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines.generate import Spec, generate
from tests.servers.prism import PrismServer

RUNNER = "FnApiRunner"  # pinned: the default DirectRunner would try to download Prism
PINNED = ["--runner", RUNNER]


def runner_options(**extra: Any) -> PipelineOptions:
    return PipelineOptions(runner=RUNNER, **extra)


@pytest.fixture(scope="module")
def prism(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrismServer]:
    """A Prism job server (Beam's Go runner, built by `make tools`) owned by the module's tests."""
    server = PrismServer()
    server.start(tmp_path_factory.mktemp("prism") / "prism.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A 20k-line archive over 3 days: plain and .gz history files, the live .log day, 1% malformed."""
    root = tmp_path_factory.mktemp("sample")
    manifest = generate(root, Spec(lines=20_000, days=3, users=800, seed=11))
    return root / "logs", manifest


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """The gateway tests' `start(**settings)`: an in-process gateway on a free port with a spool under
    tmp_path, stopped after the test."""
    from connectors.gateway.service import GatewayThread
    from connectors.gateway.settings import GatewaySettings

    running: list[GatewayThread] = []

    def start(**settings: Any) -> GatewayThread:
        settings.setdefault("spool", tmp_path / "spool")
        gateway = GatewayThread(GatewaySettings(host="127.0.0.1", port=0, **settings)).start()
        running.append(gateway)
        return gateway

    yield start
    for gateway in running:
        gateway.stop()
