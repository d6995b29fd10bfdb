"""The gateway inside a process of one's own choosing: `serve(settings, stop, ready)` in an event loop, or
`GatewayThread` (its own loop in a thread: the tests, tools). `python -m pipelines.gateway` is the
command-line service over `serve`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from connectors.gateway.server import GatewayServer
from connectors.gateway.settings import GatewaySettings
from connectors.gateway.spool import LineSink
from connectors.loop_thread import LoopThread


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


class GatewayThread(LoopThread):
    """The gateway in a thread with its own event loop: `start()` returns once it accepts; `stop()` drains."""

    def __init__(self, settings: GatewaySettings, sink: LineSink | None = None) -> None:
        super().__init__("the gateway", "dpipe-gateway")
        self.settings = settings
        self.sink = sink
        self.server: GatewayServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None, "not started"
        return f"http://{self.settings.host}:{self.server.port}"

    async def run(self, stop: asyncio.Event) -> None:
        await serve(self.settings, stop, self._started, self.sink)

    def _started(self, server: GatewayServer) -> None:
        self.server = server
        self.ready()
