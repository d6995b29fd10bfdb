"""An asyncio service in a thread of its own, with its own event loop: the gateway or the dashboard beside a
stream, a test or a tool. `start()` returns once the service accepts, or raises what kept it from starting;
`stop()` sets its stop event, so the service ends in its own order (drains, closes), and joins the thread."""

from __future__ import annotations

import asyncio
import threading
from typing import Self


class LoopThread:
    """Subclasses implement `run(stop)`: serve until `stop` is set, calling `self.ready()` once accepting."""

    stop_seconds = 60.0
    """How long `stop()` waits for the service to end by default."""

    def __init__(self, what: str, name: str) -> None:
        self.what = what  # for errors: "the gateway", "the dashboard on 127.0.0.1:8080"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)

    async def run(self, stop: asyncio.Event) -> None:
        raise NotImplementedError

    def ready(self) -> None:
        self._ready.set()

    def _main(self) -> None:
        async def main() -> None:
            self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
            await self.run(self._stop)

        try:
            asyncio.run(main())
        except BaseException as err:  # e.g. the port is taken: reported by start()
            self._error = err
            self._ready.set()

    def start(self, timeout: float = 30) -> Self:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"{self.what} did not start within {timeout:g} s")
        if self._error is not None:
            raise RuntimeError(f"{self.what} did not start: {self._error}") from self._error
        return self

    def stop(self, timeout: float | None = None) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(self.stop_seconds if timeout is None else timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
