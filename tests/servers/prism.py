"""Beam's Prism runner (Go) for local streaming tests: the binary `make tools` builds, pinned flags, and a
Prism job server the test owns and stops by PID.

Why Prism: the Python local runners cannot emit windowed results while an unbounded source is still
running (they hold its watermark until it ends); Prism can (tests/test_prism.py).
"""

from __future__ import annotations

import socket
from pathlib import Path

from tests.servers import LocalServer

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".tools" / "bin"


def prism_path() -> Path:
    """`.tools/bin/prism`, built by `make tools` (Beam's Go runner at the Python SDK's version)."""
    path = BIN / "prism"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run `make tools` (builds Prism with Go from the module proxy)")
    return path


LOOPBACK = ("--environment_type=LOOPBACK",)


def prism_options(environment: tuple[str, ...] = LOOPBACK) -> list[str]:
    """Pipeline flags that run on our Prism binary and never download one.

    A local --prism_location is used as is (Beam's PrismJobServer only downloads for a URL or when the flag is
    absent). Beam then starts Prism itself and keeps it until the interpreter exits; use PrismServer for a
    process the caller stops. LOOPBACK runs the Python workers in this process (PrismRunner's default, pinned);
    `environment` replaces it (e.g. EXTERNAL worker pools). Add --streaming for unbounded pipelines.
    """
    return ["--runner=PrismRunner", f"--prism_location={prism_path()}", *environment, "--prism_log_level=warn"]


class PrismServer(LocalServer):
    """A Prism job server in a subprocess: pipelines submit to it with `options()`; `stop()` ends it by PID."""

    name = "prism"

    def __init__(self) -> None:
        super().__init__()
        self.endpoint = f"localhost:{self.port}"

    def command(self) -> list[str]:
        return [str(prism_path()), "--job_port", str(self.port), "--serve_http=false", "--log_level", "warn"]

    def probe(self) -> None:
        socket.create_connection(("127.0.0.1", self.port), timeout=1).close()

    def options(self, environment: tuple[str, ...] = LOOPBACK) -> list[str]:
        """prism_options() pointed at this server: with --job_endpoint Beam starts no Prism of its own."""
        return [*prism_options(environment), f"--job_endpoint={self.endpoint}"]
