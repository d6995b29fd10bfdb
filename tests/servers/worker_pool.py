"""An SDK worker pool started apart, as a TaskManager's sidecar would be (`python -m pipelines.worker_pool`).

Its environment is deliberately bare (no AWS or HDFS settings): whatever the workers know of the job, they
got from the runner. It runs this venv's interpreter with the repository on PYTHONPATH, so workers import dpipe.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from tests.servers import LocalServer

ROOT = Path(__file__).resolve().parents[2]


class WorkerPool(LocalServer):
    """`environment()` gives the Beam options that send a job's SDK workers to this pool."""

    name = "worker pool"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "pipelines.worker_pool", "--port", str(self.port)]

    def environment(self) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)
        return {"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": os.environ.get("HOME", "/tmp")}

    def probe(self) -> None:
        socket.create_connection(("127.0.0.1", self.port), timeout=1).close()

    def beam_options(self) -> tuple[str, ...]:
        return ("--environment_type=EXTERNAL", f"--environment_config=localhost:{self.port}")

    def workers_started(self, log: Path) -> int:
        """How many SDK workers the pool has started (Beam logs each start)."""
        return log.read_text().count("Starting worker with command") if log.exists() else 0
