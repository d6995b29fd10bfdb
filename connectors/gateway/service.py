"""The gateway inside a process of one's own choosing: `serve(settings, stop, ready)` in an event loop, or
`GatewayThread` (its own loop in a thread: the tests, tools). `python -m pipelines.gateway` is the
command-line service over `serve`."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from connectors.gateway.server import GatewayServer
from connectors.gateway.settings import GatewaySettings
from connectors.gateway.spool import LineSink


async def serve(settings: GatewaySettings, stop: asyncio.Event,
                ready: Callable[[GatewayServer], None] | None = None, sink: LineSink | None = None) -> None:
    """Serve until `stop` is set, then drain and close the sink. `ready(server)` is called once it accepts
    (`server.port` is the bound port). The sink defaults to a SpoolWriter on `settings.spool`."""
    server = GatewayServer(settings, sink)
    await server.start()
    try:
        if ready is not None:
            ready(server)
        await stop.wait()
    finally:
        await server.stop()


class GatewayThread:
    """The gateway in a thread with its own event loop: `start()` returns once it accepts; `stop()` drains."""

    def __init__(self, settings: GatewaySettings, sink: LineSink | None = None) -> None:
        self.settings = settings
        self.sink = sink
        self.server: GatewayServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="dpipe-gateway", daemon=True)

    @property
    def url(self) -> str:
        assert self.server is not None, "not started"
        return f"http://{self.settings.host}:{self.server.port}"

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await serve(self.settings, self._stop, self._started, self.sink)

        try:
            asyncio.run(main())
        except BaseException as err:
            self._error = err
            self._ready.set()

    def _started(self, server: GatewayServer) -> None:
        self.server = server
        self._ready.set()

    def start(self, timeout: float = 30) -> GatewayThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the gateway did not start within {timeout} s")
        if self._error is not None:
            raise RuntimeError(f"the gateway failed to start: {self._error}") from self._error
        return self

    def stop(self, timeout: float = 60) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
