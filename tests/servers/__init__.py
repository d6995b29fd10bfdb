"""Real servers for tests, each started on loopback by the test setup and stopped by PID."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import IO, Any


def free_port(avoid: frozenset[int] = frozenset()) -> int:
    """A port nobody listens on right now (the OS picks it), none of `avoid` (ports taken by the same server)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port
    raise RuntimeError("no free port on 127.0.0.1")


class LocalServer:
    """A server subprocess on a free loopback port: started with its output in a log, ready once `probe()`
    stops raising, stopped by PID (and sent SIGTERM if the test process dies first)."""

    name = "server"

    def __init__(self) -> None:
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def command(self) -> list[str]:
        raise NotImplementedError

    def probe(self) -> None:
        """Raise while the server does not answer yet."""
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        """The server's environment variables; None: this process's."""
        return None

    def preexec(self) -> Any:
        """What the child runs before exec: it gets SIGTERM when the test dies. Extend for resource limits."""
        from tests.servers import jvm

        return jvm.pdeathsig_preexec()

    def start(self, log: Path, timeout: float = 60) -> None:
        self._log = log.open("wb")
        self._proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT,
                                      env=self.environment(), preexec_fn=self.preexec())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self._proc.returncode}): {log.read_text()[-2000:]}")
            try:
                self.probe()
                return
            except Exception:  # not listening yet: connection refused, ServiceUnavailable, timeouts
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer on port {self.port} within {timeout} s")

    def stop(self) -> None:
        from tests.servers import jvm

        jvm.stop_process(self._proc)  # not always a JVM, but stopped the same way: by PID
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
