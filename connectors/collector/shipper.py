"""POSTing batches to the gateway until one answers 200: failover, backoff with jitter, Retry-After.

Answers and what the shipper does:

- 200: acknowledged.
- 429: wait Retry-After (the spool is full), same gateway.
- connection error, timeout, 408, 5xx: the next gateway URL at once; once every URL failed, exponential
  backoff with jitter (at least a 503's Retry-After).
- other 4xx (token, size, category): logged as an error, retried every `max_backoff`: a line is never
  dropped, an operator fixes the config or the gateway's limits.

After `failback_after` on a secondary URL, batches try the first one again.
"""

from __future__ import annotations

import asyncio
import email.utils
import gzip
import logging
import random
import ssl
import time

import aiohttp

from connectors.collector.batcher import Batch
from connectors.collector.config import GatewayTarget, RetryConfig
from connectors.collector.metrics import Metrics

log = logging.getLogger("dpipe.collector")
USER_AGENT = "dpipe-collector/1"
MAX_RETRY_AFTER = 600.0


def retry_after(value: str | None, default: float) -> float:
    """Seconds from a Retry-After header (delta seconds or an HTTP date)."""
    if not value:
        return default
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    return min(max(0.0, when.timestamp() - time.time()), MAX_RETRY_AFTER)


def backoff(failures: int, initial: float, maximum: float) -> float:
    """Exponential backoff with equal jitter: between half and all of min(max, initial * 2^(n-1))."""
    delay = min(maximum, initial * 2 ** max(0, failures - 1))
    return delay / 2 + random.uniform(0, delay / 2)


class Shipper:
    def __init__(self, target: GatewayTarget, retry: RetryConfig, metrics: Metrics, connections: int) -> None:
        self.target = target
        self.retry = retry
        self.metrics = metrics
        self.urls = [u.rstrip("/") for u in target.urls]
        self.active = 0
        self.switched_at = 0.0
        self.connections = connections
        self.session: aiohttp.ClientSession | None = None
        self._headers = {"Content-Type": "text/plain", "User-Agent": USER_AGENT}
        token = target.bearer()
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        if target.gzip:
            self._headers["Content-Encoding"] = "gzip"
        self._failing: set[int] = set()  # URLs whose last answer was a failure (for logging transitions)

    async def start(self) -> None:
        tls: ssl.SSLContext | bool = True
        if not self.target.verify_tls:
            tls = False
        elif self.target.ca_file is not None:
            tls = ssl.create_default_context(cafile=str(self.target.ca_file))
        connector = aiohttp.TCPConnector(limit=self.connections, ssl=tls)
        timeout = aiohttp.ClientTimeout(total=self.target.timeout)
        self.session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def send(self, batch: Batch, body: bytes) -> None:
        """Return once a gateway answered 200 for the batch; retry everything else, forever."""
        assert self.session is not None
        if self.target.gzip:
            body = await asyncio.to_thread(gzip.compress, body, 1)
        headers = {**self._headers, "Idempotency-Key": batch.key}
        tried: set[int] = set()
        failures = 0
        while True:
            if self.active and time.monotonic() - self.switched_at >= self.target.failback_after:
                self.active = 0  # try the primary again
            index = self.active
            url = f"{self.urls[index]}/v1/logs/{batch.category}"
            batch.attempts += 1
            status, hint, detail = await self._post(url, body, headers)
            self.metrics.inc("responses_total", code=str(status))
            if status == 200:
                if index in self._failing:
                    self._failing.discard(index)
                    log.info("collector: gateway %s accepts again", self.urls[index])
                return
            if status == 429:
                self.metrics.inc("rate_limited_total")
                reason, delay = "429", retry_after(hint, 1.0) * random.uniform(1.0, 1.1)
            elif status == 0 or status == 408 or status >= 500:
                reason = "connection" if status == 0 else str(status)
                self._fail_over(index)
                tried.add(index)
                if len(tried) < len(self.urls):
                    self.metrics.inc("retries_total", reason=reason)
                    continue  # another gateway now
                tried.clear()
                failures += 1
                delay = backoff(failures, self.retry.initial_backoff, self.retry.max_backoff)
                if status == 503:
                    delay = max(delay, min(retry_after(hint, 0.0), self.retry.max_backoff))
            else:
                reason, delay = str(status), self.retry.max_backoff
                log.error("collector: gateway %s refused a %s batch with %d: %s; retrying in %.0f s (fix the "
                          "collector's config or the gateway's limits)", self.urls[index], batch.category, status,
                          detail, delay)
            if index not in self._failing and status != 429:
                self._failing.add(index)
                log.warning("collector: gateway %s: %s; retrying with backoff", self.urls[index],
                            detail or f"HTTP {status}")
            self.metrics.inc("retries_total", reason=reason)
            await asyncio.sleep(delay)

    async def _post(self, url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str | None, str]:
        """(status, Retry-After, detail); status 0 when no answer came."""
        assert self.session is not None
        try:
            async with self.session.post(url, data=body, headers=headers) as response:
                text = await response.read()
                return response.status, response.headers.get("Retry-After"), text[:300].decode("utf-8", "replace")
        except (aiohttp.ClientError, TimeoutError, OSError) as err:
            return 0, None, f"{type(err).__name__}: {err}"

    def _fail_over(self, index: int) -> None:
        if len(self.urls) > 1 and self.active == index:
            self.active = (index + 1) % len(self.urls)
            self.switched_at = time.monotonic()
            self.metrics.inc("failovers_total")
            log.warning("collector: failing over from %s to %s", self.urls[index], self.urls[self.active])
