"""The HTTP gateway: collectors POST ALS lines, the gateway answers 200 only once a LineSink made them durable.

    POST /v1/logs/{category}   body: lines separated by \\n (or \\r\\n), optionally Content-Encoding: gzip
    GET  /healthz              200 {"status": "ok"}, 503 once the sink's writer died
    GET  /metrics              Prometheus text format

Lines are not parsed here (bad lines become dead letters in the pipeline, with their source); the gateway
only enforces sizes, auth and back-pressure: 429 with Retry-After while the sink is full, 503 while shutting
down. `Gateway` holds these semantics apart from the server library; `GatewayServer` serves it with aiohttp
(chosen by measurement against uvicorn + httptools with `bench/gateway.py`: as fast, one package, embeddable).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from connectors.spool import CATEGORY, LineSink, SinkError, SpoolWriter

log = logging.getLogger("dpipe.gateway")

LOGS_PREFIX = "/v1/logs/"
RETRY_FULL_SECONDS = 1
RETRY_UNAVAILABLE_SECONDS = 5
SINK_DEAD = "the sink's writer died; restart the gateway"


class TokenSettings(BaseModel):
    """A bearer token of one project, allowed to post to the categories matching its globs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str = Field(min_length=1)
    token: str = Field(min_length=16)
    categories: list[str] = Field(default=["*"], min_length=1)


class GatewaySettings(BaseModel):
    """The `gateway:` section of a job config. With no tokens, auth is off. Memory is bounded by
    max_in_flight x max_body_bytes: more concurrent posts get 429."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    spool: Path | None = None
    max_body_bytes: int = Field(default=16 * 2**20, gt=0)
    max_line_bytes: int = Field(default=2**20, gt=0)
    max_lines: int = Field(default=100_000, gt=0)
    max_in_flight: int = Field(default=64, gt=0)
    max_spool_bytes: int = Field(default=2**30, gt=0)
    segment_bytes: int = Field(default=64 * 2**20, gt=0)
    segment_seconds: float = Field(default=5.0, gt=0)
    fsync: bool = True
    tokens: list[TokenSettings] = []

    def spool_writer(self) -> SpoolWriter:
        if self.spool is None:
            raise ValueError("the gateway needs a spool directory")
        return SpoolWriter(self.spool, self.segment_bytes, self.segment_seconds, self.max_spool_bytes, self.fsync)


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


class Rejected(Exception):
    """A request the gateway refuses: its status, the message for the client, and headers."""

    def __init__(self, status: int, message: str, retry_after: int | None = None, **headers: str) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers if retry_after is None else {**headers, "Retry-After": str(retry_after)}


BodyReader = Callable[[int], Awaitable[bytes | None]]
"""Reads the whole request body, or returns None as soon as it exceeds the given number of bytes."""


def gunzip(data: bytes, limit: int) -> bytes:
    """Decompress a (multi-member) gzip body, stopping past `limit` output bytes: no gzip bomb gets inflated."""
    parts, size = [], 0
    while data:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            part = inflater.decompress(data, limit - size + 1)
        except zlib.error as err:
            raise Rejected(400, f"body is not valid gzip: {err}") from None
        size += len(part)
        if size > limit:
            raise Rejected(413, f"decompressed body is larger than {limit} bytes")
        if not inflater.eof:
            raise Rejected(400, "body is not valid gzip: truncated")
        parts.append(part)
        data = inflater.unused_data
    return b"".join(parts)


def split_lines(body: bytes, max_line_bytes: int, max_lines: int) -> list[bytes]:
    """The body's non-empty lines without their `\\n` or `\\r\\n`; a line or count over the limit is refused."""
    lines = body.split(b"\n")
    if b"\r" in body:
        lines = [line[:-1] if line.endswith(b"\r") else line for line in lines]
    if lines and max(map(len, lines)) > max_line_bytes:
        number, line = next((n, line) for n, line in enumerate(lines, 1) if len(line) > max_line_bytes)
        raise Rejected(413, f"line {number} is {len(line)} bytes; the limit is {max_line_bytes}")
    lines = [line for line in lines if line]
    if len(lines) > max_lines:
        raise Rejected(413, f"{len(lines)} lines in one request; the limit is {max_lines}")
    return lines


class Gateway:
    """The gateway's HTTP semantics over a LineSink, independent of the server library."""

    def __init__(self, settings: GatewaySettings, sink: LineSink) -> None:
        self.settings = settings
        self.sink = sink
        self.draining = False
        self._tokens = {t.token: t for t in settings.tokens}
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.requests: Counter[int] = Counter()
        self.lines = 0
        self.bytes = 0

    async def handle(self, method: str, path: str, headers: Mapping[str, str], read_body: BodyReader) -> Response:
        """Answer one request; `headers` with lower-case names."""
        try:
            response = await self._route(method, path, headers, read_body)
        except Rejected as err:
            response = Response(err.status, orjson.dumps({"error": str(err)}), headers=err.headers)
        self.requests[response.status] += 1
        return response

    async def _route(self, method: str, path: str, headers: Mapping[str, str], read_body: BodyReader) -> Response:
        routes = {"/healthz": ("GET", self._health), "/metrics": ("GET", self._metrics)}
        if path.startswith(LOGS_PREFIX):
            if method != "POST":
                raise Rejected(405, f"{method} not allowed; use POST", Allow="POST")
            return await self._post(path[len(LOGS_PREFIX):], headers, read_body)
        if path not in routes:
            raise Rejected(404, f"no such path: {path}; POST lines to {LOGS_PREFIX}{{category}}")
        allowed, answer = routes[path]
        if method not in (allowed, "HEAD"):
            raise Rejected(405, f"{method} not allowed; use {allowed}", Allow=allowed)
        return answer()

    def _health(self) -> Response:
        if not self.sink.healthy():
            return Response(503, orjson.dumps({"status": "failed", "error": SINK_DEAD}))
        return Response(200, orjson.dumps({"status": "draining" if self.draining else "ok"}))

    def _metrics(self) -> Response:
        return Response(200, self.metrics().encode(), "text/plain; version=0.0.4")

    async def _post(self, category: str, headers: Mapping[str, str], read_body: BodyReader) -> Response:
        settings = self.settings
        if not CATEGORY.fullmatch(category):
            raise Rejected(400, f"bad category name {category!r}: expected letters, digits and _, "
                                "starting with a letter")
        self._authorize(category, headers.get("authorization"))
        if self.draining or not self.sink.healthy():
            raise Rejected(503, "shutting down" if self.draining else SINK_DEAD,
                           RETRY_UNAVAILABLE_SECONDS)
        if self.sink.full():
            raise Rejected(429, "spool full; retry later", RETRY_FULL_SECONDS)
        if self._in_flight >= settings.max_in_flight:  # memory stays bounded by in-flight bodies, not by rate
            raise Rejected(429, f"{self._in_flight} requests in flight; retry later", RETRY_FULL_SECONDS)
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
            raise Rejected(413, f"body is larger than {settings.max_body_bytes} bytes")
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip", "x-gzip"):
            raise Rejected(415, f"Content-Encoding {encoding} not supported; use gzip or none")
        self._in_flight += 1
        self._idle.clear()
        try:
            body = await read_body(settings.max_body_bytes)
            if body is None:
                raise Rejected(413, f"body is larger than {settings.max_body_bytes} bytes")
            if encoding != "identity":
                body = gunzip(body, settings.max_body_bytes)
            lines = split_lines(body, settings.max_line_bytes, settings.max_lines)
            try:
                await self.sink.append(category, lines)
            except Exception as err:  # not durable, whatever the sink's reason: the client retries
                if not isinstance(err, SinkError):
                    log.warning("gateway: %s append failed: %r", category, err)
                raise Rejected(503, str(err), RETRY_UNAVAILABLE_SECONDS) from None
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
        self.lines += len(lines)
        self.bytes += len(body)
        return Response(200, b'{"accepted":%d}' % len(lines))

    def _authorize(self, category: str, authorization: str | None) -> None:
        if not self._tokens:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Rejected(401, "missing bearer token", **{"WWW-Authenticate": "Bearer"})
        grant = self._tokens.get(token.strip())
        if grant is None:
            raise Rejected(401, "invalid bearer token", **{"WWW-Authenticate": 'Bearer error="invalid_token"'})
        if not any(fnmatch.fnmatchcase(category, glob) for glob in grant.categories):
            raise Rejected(403, f"project {grant.project} may not post to category {category}")

    async def drain(self, timeout: float) -> None:
        """Refuse new posts (503) and wait for the ones in flight to be acknowledged."""
        self.draining = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()

    def metrics(self) -> str:
        """Prometheus text exposition: the gateway's counters, then the sink's stats (see LineSink.stats)."""
        out = ["# HELP dpipe_gateway_requests_total HTTP requests answered, by status code.",
               "# TYPE dpipe_gateway_requests_total counter"]
        out += [f'dpipe_gateway_requests_total{{code="{code}"}} {n}' for code, n in sorted(self.requests.items())]
        gauges = {"dpipe_gateway_lines_total": ("counter", "Lines accepted (made durable).", self.lines),
                  "dpipe_gateway_bytes_total": ("counter", "Body bytes accepted, after decompression.", self.bytes),
                  "dpipe_gateway_sink_full": ("gauge", "1 while posts are refused with 429.", int(self.sink.full())),
                  "dpipe_gateway_up": ("gauge", "0 once the sink's writer died.", int(self.sink.healthy()))}
        for name, (kind, text, value) in gauges.items():
            out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        stats = self.sink.stats()
        for key, value in sorted(stats.items()):
            name = f"dpipe_sink_{key}"
            if key.endswith("_count") and key.removesuffix("_count") + "_sum" in stats:
                continue  # written with its _sum
            if key.endswith("_sum") and key.removesuffix("_sum") + "_count" in stats:
                base = name.removesuffix("_sum")
                out += [f"# TYPE {base} summary", f"{base}_sum {value:g}",
                        f"{base}_count {stats[key.removesuffix('_sum') + '_count']:g}"]
                continue
            out += [f"# TYPE {name} {'counter' if key.endswith('_total') else 'gauge'}", f"{name} {value:g}"]
        return "\n".join(out) + "\n"


async def _read_aiohttp(request: web.Request, limit: int) -> bytes | None:
    body = bytearray()
    while chunk := await request.content.readany():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


class GatewayServer:
    """The gateway on aiohttp: `await start()`, then `port`; `await stop()` drains, then closes the sink."""

    def __init__(self, settings: GatewaySettings, sink: LineSink | None = None, drain_seconds: float = 30) -> None:
        self.settings = settings
        self.sink = sink if sink is not None else settings.spool_writer()
        self.gateway = Gateway(settings, self.sink)
        self.drain_seconds = drain_seconds
        self.port = settings.port
        self._runner: web.AppRunner | None = None

    async def _handler(self, request: web.Request) -> web.StreamResponse:
        response = await self.gateway.handle(request.method, request.path, request.headers,
                                             lambda limit: _read_aiohttp(request, limit))
        answer = web.Response(status=response.status, body=response.body,
                              headers={"Content-Type": response.content_type, **response.headers})
        if not request.content.at_eof():
            answer.force_close()  # a refused body is left unread: the connection cannot carry another request
        return answer

    async def start(self) -> None:
        app = web.Application()  # bodies are read by _read_aiohttp, with max_body_bytes
        app.router.add_route("*", "/{tail:.*}", self._handler)
        # auto_decompress off: gunzip() inflates with the body limit, and other encodings get a clear 415
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, auto_decompress=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port, reuse_address=True)
        await site.start()
        self.port = self._runner.addresses[0][1]
        log.info("gateway listening on http://%s:%d, spool %s", self.settings.host, self.port, self.settings.spool)

    async def stop(self) -> None:
        """Answer 503 to new posts, let those in flight finish, stop listening, flush and seal the spool."""
        await self.gateway.drain(self.drain_seconds)
        if self._runner is not None:
            await self._runner.cleanup()
        await self.sink.close()
        log.info("gateway stopped")
