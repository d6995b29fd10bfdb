"""`python -m pipelines.gateway` as a real process on a free port, optionally under resource limits."""

from __future__ import annotations

import http.client
import resource
import signal
import sys
from pathlib import Path
from typing import Any

from tests.servers import LocalServer


class GatewayProcess(LocalServer):
    """The gateway on `spool`; `limits` are {RLIMIT_*: (soft, hard)} set in the child before exec (with
    SIGXFSZ ignored, so a file-size limit is an EFBIG error, as a full disk is ENOSPC)."""

    name = "gateway"

    def __init__(self, spool: Path, *args: str, limits: dict[int, tuple[int, int]] | None = None) -> None:
        super().__init__()
        self.spool, self.args, self.limits = spool, list(args), dict(limits or {})

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "pipelines.gateway", "--spool", str(self.spool), "--port", str(self.port),
                *self.args]

    def probe(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/healthz")
            conn.getresponse().read()
        finally:
            conn.close()

    def preexec(self) -> Any:
        base, limits = super().preexec(), self.limits

        def preexec() -> None:
            if base is not None:
                base()
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            for which, values in limits.items():
                resource.setrlimit(which, values)

        return preexec

    def signal(self, signum: int, timeout: float = 60) -> int:
        """Send `signum` and wait for the exit code (a deadline, not a measurement)."""
        assert self._proc is not None
        self._proc.send_signal(signum)
        return self._proc.wait(timeout)
