"""The HTTP gateway: collectors POST ALS lines, the gateway answers 200 only once a LineSink made them durable.

    POST /v1/logs/{category}   body: lines separated by \\n (or \\r\\n), optionally Content-Encoding: gzip;
                               optional Idempotency-Key header: a retry with the same key is not written twice
    GET  /healthz              200 {"status": "ok"}, 503 once the sink's writer died
    GET  /metrics              Prometheus text format (needs a token when tokens are configured)

Lines are not parsed here (bad lines become dead letters in the pipeline, with their source); the gateway
only enforces sizes, auth and back-pressure: 429 with Retry-After while the sink is full, a token is over its
rate or the bytes in flight are at their bound; 507 when the disk is full; 503 while shutting down. Every
refused request is one log line. `Gateway` holds these semantics apart from the server library;
`connectors.gateway.server.GatewayServer` serves it with aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hmac
import logging
import math
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

import orjson

from connectors.gateway.settings import GatewaySettings, TokenSettings
from connectors.gateway.spool import CATEGORY, LineSink, SinkBusy, SinkError, SinkFull, WriteFailed
from transforms.category import MAX_CATEGORY, camel_case, camel_case_glob

log = logging.getLogger("dpipe.gateway")

LOGS_PREFIX = "/v1/logs/"
RETRY_FULL_SECONDS = 1
RETRY_UNAVAILABLE_SECONDS = 5
SINK_DEAD = "the sink's writer died; restart the gateway"
MAX_KEY_CHARS = 200


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
"""Reads the whole request body, or returns None as soon as it exceeds the given number of bytes; raises
TimeoutError when the client stalls."""


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


class RateLimit:
    """A token bucket: `rate` requests per second, bursts of up to one second's worth."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate)
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def take(self) -> float:
        """0 when a request may go now, else the seconds until one may."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


def check_key(value: str | None) -> str | None:
    """The Idempotency-Key header: up to MAX_KEY_CHARS printable ASCII characters, or absent."""
    if value is None:
        return None
    if not 0 < len(value) <= MAX_KEY_CHARS or not value.isascii() or not value.isprintable():
        raise Rejected(400, f"Idempotency-Key must be 1 to {MAX_KEY_CHARS} printable ASCII characters")
    return value


def sink_refusal(err: Exception) -> Rejected:
    """The answer to a sink that did not make a request durable: the client retries all but nothing."""
    if isinstance(err, SinkFull):
        return Rejected(429, str(err), RETRY_FULL_SECONDS)
    if isinstance(err, SinkBusy):
        return Rejected(409, str(err), RETRY_FULL_SECONDS)
    if isinstance(err, WriteFailed) and err.storage:
        return Rejected(507, str(err), RETRY_UNAVAILABLE_SECONDS)
    return Rejected(503, str(err), RETRY_UNAVAILABLE_SECONDS)


class Gateway:
    """The gateway's HTTP semantics over a LineSink, independent of the server library."""

    def __init__(self, settings: GatewaySettings, sink: LineSink) -> None:
        self.settings = settings
        self.sink = sink
        self.stats_sources: list[Callable[[], dict[str, float]]] = [sink.stats]
        """What /metrics writes as `dpipe_sink_*`: the sink's stats, and the shipper's when there is one."""
        self.draining = False
        self._tokens = [(t.token.encode(), t) for t in settings.tokens]
        self._limits = {t.token: RateLimit(t.max_requests_per_second) for t in settings.tokens
                        if t.max_requests_per_second}
        self._in_flight = 0
        self._in_flight_bytes = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.requests: Counter[int] = Counter()
        self.lines = 0
        self.bytes = 0
        self.duplicates = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def handle(self, method: str, path: str, headers: Mapping[str, str], read_body: BodyReader,
                     peer: str = "") -> Response:
        """Answer one request; `headers` with lower-case names. A refusal is logged as one line."""
        try:
            response = await self._route(method, path, headers, read_body)
        except Rejected as err:
            response = Response(err.status, orjson.dumps({"error": str(err)}), headers=err.headers)
            log.warning("gateway: %s %s from %s: %d %s", method, path[:200], peer or "?", err.status, err)
        self.requests[response.status] += 1
        return response

    async def _route(self, method: str, path: str, headers: Mapping[str, str], read_body: BodyReader) -> Response:
        routes = {"/healthz": ("GET", self._health), "/metrics": ("GET", self._metrics)}
        if path.startswith(LOGS_PREFIX):
            if method != "POST":
                raise Rejected(405, f"{method} not allowed; use POST", Allow="POST")
            return await self._post(path[len(LOGS_PREFIX):], headers, read_body)
        if path not in routes:
            raise Rejected(404, f"no such path: {path[:200]}; POST lines to {LOGS_PREFIX}{{category}}")
        allowed, answer = routes[path]
        if method not in (allowed, "HEAD"):
            raise Rejected(405, f"{method} not allowed; use {allowed}", Allow=allowed)
        if path == "/metrics":
            self._grant(headers.get("authorization"))  # what is posted, by whom, is not public
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
            raise Rejected(400, f"bad category name {category[:MAX_CATEGORY + 20]!r}: expected letters, digits "
                                f"and _, starting with a letter, at most {MAX_CATEGORY} characters")
        self._authorize(category, headers.get("authorization"))
        key = check_key(headers.get("idempotency-key"))
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
        # what the body may take in memory: as received, plus decompressed (up to the body limit)
        reserved = int(length) if length is not None else settings.max_body_bytes
        if encoding != "identity":
            reserved += settings.max_body_bytes
        if self._in_flight and self._in_flight_bytes + reserved > settings.max_in_flight_bytes:
            raise Rejected(429, f"{self._in_flight_bytes} body bytes in flight; retry later", RETRY_FULL_SECONDS)
        self._in_flight += 1
        self._in_flight_bytes += reserved
        self._idle.clear()
        try:
            try:
                body = await read_body(settings.max_body_bytes)
            except TimeoutError:
                raise Rejected(408, f"the body stalled (read_timeout {settings.read_timeout:g} s, body_timeout "
                                    f"{settings.body_timeout:g} s)") from None
            if body is None:
                raise Rejected(413, f"body is larger than {settings.max_body_bytes} bytes")
            if encoding != "identity":
                body = gunzip(body, settings.max_body_bytes)
            size = len(body)
            lines = split_lines(body, settings.max_line_bytes, settings.max_lines)
            del body
            try:
                written = await self.sink.append(category, lines, key)
            except Exception as err:  # not durable, whatever the sink's reason: the client retries
                if not isinstance(err, SinkError):
                    log.warning("gateway: %s append failed: %r", category, err)
                raise sink_refusal(err) from None
        finally:
            self._in_flight -= 1
            self._in_flight_bytes -= reserved
            if not self._in_flight:
                self._idle.set()
        if written is False:
            self.duplicates += 1
            return Response(200, b'{"accepted":%d,"duplicate":true}' % len(lines))
        self.lines += len(lines)
        self.bytes += size
        return Response(200, b'{"accepted":%d}' % len(lines))

    def _grant(self, authorization: str | None) -> TokenSettings | None:
        """The token's grant (None with auth off); every configured token is compared, in constant time."""
        if not self._tokens:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Rejected(401, "missing bearer token", **{"WWW-Authenticate": "Bearer"})
        given = token.encode("utf-8", "surrogateescape")
        grant = None
        for secret, settings in self._tokens:
            if hmac.compare_digest(secret, given):
                grant = settings
        if grant is None:
            raise Rejected(401, "invalid bearer token", **{"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return grant

    def _authorize(self, category: str, authorization: str | None) -> None:
        grant = self._grant(authorization)
        if grant is None:
            return
        name = camel_case(category)  # the archive's name: two spellings of one category get one answer
        if not any(fnmatch.fnmatchcase(name, camel_case_glob(glob)) for glob in grant.categories):
            raise Rejected(403, f"project {grant.project} may not post to category {category}")
        limit = self._limits.get(grant.token)
        if limit is not None and (wait := limit.take()):
            raise Rejected(429, f"project {grant.project} is over {limit.rate:g} requests/s; retry later",
                           max(1, math.ceil(wait)))

    async def drain(self, timeout: float) -> int:
        """Refuse new posts (503) and wait up to `timeout` for those in flight; returns how many are left."""
        self.draining = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        return self._in_flight

    def metrics(self) -> str:
        """Prometheus text exposition: the gateway's counters, then the sink's stats (see LineSink.stats)."""
        out = ["# HELP dpipe_gateway_requests_total HTTP requests answered, by status code.",
               "# TYPE dpipe_gateway_requests_total counter"]
        out += [f'dpipe_gateway_requests_total{{code="{code}"}} {n}' for code, n in sorted(self.requests.items())]
        gauges = {"dpipe_gateway_lines_total": ("counter", "Lines accepted (made durable).", self.lines),
                  "dpipe_gateway_bytes_total": ("counter", "Body bytes accepted, after decompression.", self.bytes),
                  "dpipe_gateway_duplicates_total": ("counter", "Retried requests acknowledged by their "
                                                                "Idempotency-Key, not written again.", self.duplicates),
                  "dpipe_gateway_in_flight_bytes": ("gauge", "Body bytes reserved by requests under way.",
                                                    self._in_flight_bytes),
                  "dpipe_gateway_sink_full": ("gauge", "1 while posts are refused with 429.", int(self.sink.full())),
                  "dpipe_gateway_up": ("gauge", "0 once the sink's writer died.", int(self.sink.healthy()))}
        for name, (kind, text, value) in gauges.items():
            out += [f"# HELP {name} {text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        stats = {key: value for source in self.stats_sources for key, value in source().items()}
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
