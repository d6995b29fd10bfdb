"""The gateway on aiohttp: `GatewayServer` serves `connectors.gateway.api.Gateway` (the HTTP semantics),
reading bodies with the size and time limits, logging malformed requests as one line, draining on stop.
aiohttp was chosen by measurement against uvicorn + httptools with `bench/gateway.py`: as fast, one package,
embeddable.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion10

from connectors.gateway.api import Gateway
from connectors.gateway.settings import GatewaySettings
from connectors.gateway.spool import LineSink, SpoolWriter

log = logging.getLogger("dpipe.gateway")


async def _read_aiohttp(request: web.Request, limit: int, read_timeout: float, body_timeout: float
                        ) -> bytes | None:
    """The body, or None past `limit` bytes; TimeoutError when a read waits `read_timeout` or the whole body
    takes `body_timeout` (slow clients must not hold a slot for ever)."""
    chunks, size = [], 0
    async with asyncio.timeout(body_timeout):
        while chunk := await asyncio.wait_for(request.content.readany(), read_timeout):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                return None
    return b"".join(chunks)  # bytes: lines go to sinks (Pub/Sub) that take nothing else


class _OneLineLogger(logging.LoggerAdapter):
    """aiohttp's server logger without tracebacks: a malformed request is one warning line, not a stack
    (aiohttp logs TLS or other non-HTTP traffic at debug level: that is a refusal too)."""

    def exception(self, msg: object, *args: object, exc_info: object = True, **kwargs: object) -> None:
        reason = exc_info if isinstance(exc_info, BaseException) else None
        text = " ".join(str(reason).split())[:300] if reason is not None else ""
        self.logger.warning("gateway: %s: %s%s", msg % args if args else msg, type(reason).__name__ if reason
                            else "error", f": {text}" if text else "")

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        if isinstance(kwargs.get("exc_info"), BaseException):
            self.exception(msg, *args, **kwargs)
        else:
            self.logger.debug(msg, *args, **kwargs)


class GatewayServer:
    """The gateway on aiohttp: `await start()`, then `port`; `await stop()` drains, then closes the sink.
    With `spool_url`, a shipper sends the spool's sealed segments there (connectors/spool_ship.py)."""

    def __init__(self, settings: GatewaySettings, sink: LineSink | None = None,
                 drain_seconds: float | None = None) -> None:
        self.settings = settings
        self.sink = sink if sink is not None else settings.spool_writer()
        self.gateway = Gateway(settings, self.sink)
        self.shipper = None
        if settings.spool_url is not None and isinstance(self.sink, SpoolWriter):
            from connectors.spool_ship import Shipper  # Beam's filesystems: only for a shipping gateway

            self.shipper = Shipper(self.sink.dir.parent, settings.spool_url)
            self.gateway.stats_sources.append(self.shipper.stats)
        self.drain_seconds = settings.drain_seconds if drain_seconds is None else drain_seconds
        self.port = settings.port
        self._runner: web.AppRunner | None = None

    async def _handler(self, request: web.Request) -> web.StreamResponse:
        settings = self.settings
        if request.version < HttpVersion10:  # HTTP/0.9 has no headers: no length, no encoding, no token
            log.warning("gateway: %s %s from %s: 400 HTTP/0.9 request refused", request.method, request.path[:200],
                        request.remote)
            self.gateway.requests[400] += 1
            answer = web.Response(status=400, text='{"error":"HTTP/0.9 is not supported"}')
            answer.force_close()
            return answer
        response = await self.gateway.handle(
            request.method, request.path, request.headers,
            lambda limit: _read_aiohttp(request, limit, settings.read_timeout, settings.body_timeout),
            request.remote or "")
        answer = web.Response(status=response.status, body=response.body,
                              headers={"Content-Type": response.content_type, **response.headers})
        if not request.content.at_eof():
            answer.force_close()  # a refused body is left unread: the connection cannot carry another request
        return answer

    async def start(self) -> None:
        context = self.settings.ssl_context()
        app = web.Application()  # bodies are read by _read_aiohttp, with max_body_bytes
        app.router.add_route("*", "/{tail:.*}", self._handler)
        # auto_decompress off: gunzip() inflates with the body limit, and other encodings get a clear 415;
        # shutdown_timeout: after the drain's grace period, what is still running is cancelled at once
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, auto_decompress=False,
                                     shutdown_timeout=0.5, logger=_OneLineLogger(log))
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port, reuse_address=True,
                           ssl_context=context)
        await site.start()
        self.port = self._runner.addresses[0][1]
        if self.shipper is not None:
            self.shipper.start()
            log.info("gateway: shipping sealed segments to %s", self.settings.spool_url)
        scheme = "https" if context else "http"
        log.info("gateway listening on %s://%s:%d, spool %s", scheme, self.settings.host, self.port,
                 self.settings.spool)

    async def stop(self) -> None:
        """Answer 503 to new posts, let those in flight finish within the grace period (then cut them off),
        stop listening, flush and seal the spool: one log line per step."""
        log.info("gateway: stopping: new posts get 503; %d in flight get %g s to finish", self.gateway.in_flight,
                 self.drain_seconds)
        left = await self.gateway.drain(self.drain_seconds)
        if left:
            log.info("gateway: %d requests still in flight after %g s: cut off unacknowledged", left,
                     self.drain_seconds)
        if self._runner is not None:
            await self._runner.cleanup()
            log.info("gateway: listener closed")
        await self.sink.close()
        if self.shipper is not None:  # after the close: it ships what the close sealed
            await asyncio.to_thread(self.shipper.stop)
            log.info("gateway: shipper stopped, %d segments left to ship at the next start",
                     self.shipper.stats()["ship_backlog"])
        log.info("gateway stopped")
