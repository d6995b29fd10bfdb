"""Shared fixtures: a small generated archive, and the pinned local runner."""

from __future__ import annotations

from collections.abc import Iterator
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
