"""The dashboard over HTTP (aiohttp): the live page, its data, and the admin API.

    GET /           the dashboard, polling /api/data every few seconds
    GET /api/data   every page's data (connectors.dashboard.data.load) with the status
    GET /status     JSON: runner, job state, uptime, inputs and watermarks, lines per sink, dead letters, late
    GET /healthz    200 {"status": "ok"}, or 503 with the problems (job failed, watermark lag, spool writer)
    GET /metrics    Prometheus text (prometheus_client) of the status and every Beam counter and gauge

`serve_in_thread` runs it beside a stream; `pipelines.dashboard` runs it alone over an output folder.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from connectors.dashboard.data import files_status, load
from connectors.dashboard.render import chart_library, render_page
from connectors.dashboard.status import Status, StatusCollector, StatusFn
from connectors.loop_thread import LoopThread

log = logging.getLogger("dpipe.dashboard")
REFRESH_S = 3


class Dashboard:
    """The routes over one output folder; `status` is the stream's (default: what the files hold)."""

    def __init__(self, output: str | Path, status: StatusFn | None = None, every_s: float = REFRESH_S) -> None:
        self.output = str(output)
        self.source: StatusFn = status or (lambda: files_status(self.output))
        self.every_s = every_s
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(StatusCollector(self.source))
        chart_library()  # fail at start, not at the first page view, when `make setup` was not run

    def status(self) -> Status:
        return self.source()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._page)
        app.router.add_get("/api/data", self._data)
        app.router.add_get("/status", self._status_json)
        app.router.add_get("/healthz", self._health)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _page(self, _: web.Request) -> web.Response:
        data = await asyncio.to_thread(self._load)
        html = render_page(data, {"url": "api/data", "every_s": self.every_s})
        return web.Response(text=html, content_type="text/html")

    def _load(self) -> dict[str, Any]:
        return load(self.output, self.status())

    async def _data(self, _: web.Request) -> web.Response:
        return _json(await asyncio.to_thread(self._load))

    async def _status_json(self, _: web.Request) -> web.Response:
        return _json(await asyncio.to_thread(self.status))

    async def _health(self, _: web.Request) -> web.Response:
        status = await asyncio.to_thread(self.status)
        if status.get("healthy", True):
            return _json({"status": "ok", "state": status.get("state")})
        return _json({"status": "failed", "state": status.get("state"), "problems": status["problems"]}, 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        body = await asyncio.to_thread(generate_latest, self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(value), status=status, content_type="application/json")


async def serve(dashboard: Dashboard, host: str, port: int, stop: asyncio.Event,
                ready: Any = None) -> None:
    """Serve until `stop` is set; `ready(port)` once it accepts (port 0: the one the system chose)."""
    runner = web.AppRunner(dashboard.app(), access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        bound = runner.addresses[0][1]
        log.info("dashboard on http://%s:%d over %s", host, bound, dashboard.output)
        if ready is not None:
            ready(bound)
        await stop.wait()
    finally:
        await runner.cleanup()


class DashboardThread(LoopThread):
    """The dashboard in a thread of its own with its own event loop: `.url` once started, `.stop()`."""

    stop_seconds = 10.0

    def __init__(self, dashboard: Dashboard, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(f"the dashboard on {host}:{port}", "dpipe-dashboard")
        self.dashboard, self.host, self.port = dashboard, host, port
        self.status = dashboard.source  # e.g. a StreamStatus, whose `result` the stream sets once submitted

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def run(self, stop: asyncio.Event) -> None:
        await serve(self.dashboard, self.host, self.port, stop, self._started)

    def _started(self, port: int) -> None:
        self.port = port
        self.ready()


def serve_in_thread(output: str | Path, port: int, status: StatusFn | None = None,
                    host: str = "127.0.0.1") -> DashboardThread:
    """Start the dashboard beside a running pipeline; returns once it accepts (`.url`, `.stop()`)."""
    return DashboardThread(Dashboard(output, status), host, port).start()
