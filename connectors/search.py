"""WriteToElasticsearch: bulk writes to Elasticsearch (official client, 9.x) or OpenSearch (opensearch-py).

Every document's fate is read from its own item in the `_bulk` answer (an HTTP 200 says nothing about the
items): 2xx is indexed; 409 on `create` is a duplicate (the deterministic `_id` was already there: a replay);
429, 5xx and 408 items are retried, alone, with bounded exponential backoff and full jitter; any other status
is a dead letter carrying the server's error, the target index and the raw line. A cluster that cannot be
reached (or keeps answering 429/5xx to the whole request) is retried the same way, then its documents are
dead-lettered: nothing is dropped and a bundle never waits longer than the retry budget, so shutdown never
hangs. Only the client differs between the two servers (`_Client`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apache_beam as beam
import orjson
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from transforms.event import DeadLetter, Event, EventBatch, decode_raw
from transforms.tags import COUNTS, DEADLETTER

log = logging.getLogger("dpipe.search")

RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
TEMPLATES = Path(__file__).resolve().parent.parent / "templates" / "elasticsearch"
STAGE = "index"


@dataclass(frozen=True)
class SearchSettings:
    """Connection and batching settings; plain data, so that Beam can ship them to workers."""

    hosts: tuple[str, ...] = ("http://127.0.0.1:9200",)
    client: str = "elasticsearch"  # or "opensearch"
    api_key: str | None = None
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    verify_certs: bool = True
    request_timeout: float = 30.0
    op_type: str = "index"  # or "create": a second write of an id is a 409, counted as a duplicate
    max_docs: int = 1000
    max_bytes: int = 5 * 2**20
    max_seconds: float = 1.0
    max_retries: int = 8
    initial_backoff: float = 0.2
    max_backoff: float = 30.0
    data_stream: str | None = None  # write every document into this data stream (op_type create)


class _Client:
    """The one place the two client libraries differ: bulk requests of ready-made NDJSON, and raw calls."""

    def __init__(self, settings: SearchSettings) -> None:
        s = settings
        common: dict[str, Any] = {"hosts": list(s.hosts), "verify_certs": s.verify_certs}
        if s.ca_file:
            common["ca_certs"] = s.ca_file
        self.kind = s.client
        if s.client == "opensearch":
            from opensearchpy import OpenSearch

            if s.username:
                common["http_auth"] = (s.username, s.password or "")
            if s.api_key:
                common["headers"] = {"authorization": f"ApiKey {s.api_key}"}
            self._client = OpenSearch(timeout=s.request_timeout, max_retries=0, retry_on_timeout=False, **common)
        else:
            from elasticsearch import Elasticsearch

            if s.username:
                common["basic_auth"] = (s.username, s.password or "")
            if s.api_key:
                common["api_key"] = s.api_key
            self._client = Elasticsearch(request_timeout=s.request_timeout, max_retries=0, retry_on_timeout=False,
                                         **common)

    def bulk(self, body: bytes) -> dict[str, Any]:
        """POST /_bulk; returns the parsed answer or raises _RequestFailed."""
        try:
            if self.kind == "opensearch":
                return self._client.bulk(body=body)
            return self._client.bulk(operations=body).body
        except Exception as err:  # every transport and HTTP failure of either client
            raise _RequestFailed(_status_of(err), f"{type(err).__name__}: {err}") from err

    def request(self, method: str, path: str, body: Any = None) -> Any:
        """A raw call (templates, policies), with the client's own error on failure."""
        if self.kind == "opensearch":
            return self._client.transport.perform_request(method, path, body=body)
        headers = {"accept": "application/json"}
        if body is not None:
            headers["content-type"] = "application/json"
        return self._client.perform_request(method, path, body=body, headers=headers).body

    def close(self) -> None:
        self._client.close()


class _RequestFailed(Exception):
    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status in RETRY_STATUSES


def _status_of(err: Exception) -> int | None:
    """The HTTP status of a client exception; None for connection errors and timeouts (retryable)."""
    for attr in ("status_code", "status"):
        value = getattr(err, attr, None)
        if isinstance(value, int):
            return value
    meta = getattr(err, "meta", None)
    status = getattr(meta, "status", None)
    return status if isinstance(status, int) else None


@dataclass
class _Doc:
    raw: str  # what a dead letter shows: the line, or the JSON of a computed document
    source: str
    offset: int | None
    category: str | None
    target: str
    action: bytes  # the action line and the source line, newline-terminated


@dataclass
class BulkResult:
    """What one flush did; `dead` are the documents that could not be indexed."""

    indexed: int = 0
    duplicates: int = 0
    retried: int = 0
    dead: list[DeadLetter] = field(default_factory=list)
    latencies_ms: list[int] = field(default_factory=list)


def document_bytes(event: Event, drop: Sequence[tuple[str, ...]], data_stream: bool) -> bytes:
    doc = event.document(tuple(drop))
    if data_stream:
        doc["@timestamp"] = event.ts
    return orjson.dumps(doc)


def classify(items: list[dict[str, Any]], op_type: str) -> tuple[list[int], list[int], list[int], dict[int, tuple]]:
    """Sort a `_bulk` answer's items by fate: (indexed, duplicates, retry, {position: (status, error)})."""
    indexed, duplicates, retry, rejected = [], [], [], {}
    for i, item in enumerate(items):
        result = next(iter(item.values()))
        status = result.get("status", 0)
        if 200 <= status < 300:
            indexed.append(i)
        elif status == 409 and op_type == "create":
            duplicates.append(i)
        elif status in RETRY_STATUSES:
            retry.append(i)
        else:
            rejected[i] = (status, result.get("error"))
    return indexed, duplicates, retry, rejected


class BulkWriter:
    """Buffers documents and writes them in bulk requests, retrying what can be retried.

    `flush` returns only when every buffered document is indexed, counted as a duplicate, or dead-lettered.
    """

    def __init__(self, client: _Client, settings: SearchSettings, sleep: Any = time.sleep) -> None:
        self.client, self.s, self._sleep = client, settings, sleep
        self._docs: list[_Doc] = []
        self._bytes = 0
        self._since = 0.0

    def add(self, event: Event, drop: Sequence[tuple[str, ...]] = ()) -> bool:
        """Buffer an event's document; True when a flush is due (count, bytes or age)."""
        body = document_bytes(event, drop, bool(self.s.data_stream))
        return self._add(event.doc_id, event.index, body, decode_raw(event.raw), event.source, event.offset,
                         event.category)

    def add_document(self, doc: dict[str, Any], source: str) -> bool:
        """Buffer a computed document (a counter's) that carries its own `_id` and `_index`."""
        body = {k: v for k, v in doc.items() if k not in ("_id", "_index")}
        if self.s.data_stream:
            body["@timestamp"] = doc.get("_t")
        raw = orjson.dumps(body)
        return self._add(doc["_id"], doc["_index"], raw, raw.decode(), source, None, None)

    def _add(self, doc_id: str, index: str, body: bytes, raw: str, source: str, offset: int | None,
             category: str | None) -> bool:
        s = self.s
        target = s.data_stream or index
        op = "create" if s.data_stream else s.op_type
        action = orjson.dumps({op: {"_index": target, "_id": doc_id}}) + b"\n" + body + b"\n"
        if not self._docs:
            self._since = time.monotonic()
        self._docs.append(_Doc(raw, source, offset, category, target, action))
        self._bytes += len(action)
        return (
            len(self._docs) >= s.max_docs or self._bytes >= s.max_bytes
            or time.monotonic() - self._since >= s.max_seconds
        )

    def flush(self) -> BulkResult:
        result = BulkResult()
        pending, self._docs, self._bytes = self._docs, [], 0
        op = "create" if self.s.data_stream else self.s.op_type
        last_error: tuple[int | None, Any] = (None, "")
        for attempt in range(self.s.max_retries + 1):
            if not pending:
                break
            if attempt:
                self._backoff(attempt)
                result.retried += len(pending)
            started = time.monotonic()
            try:
                answer = self.client.bulk(b"".join(d.action for d in pending))
            except _RequestFailed as err:
                if not err.retryable:
                    result.dead += [self._dead(d, err.status, str(err)) for d in pending]
                    return result
                last_error = (err.status, str(err))
                continue
            finally:
                result.latencies_ms.append(int((time.monotonic() - started) * 1000))
            indexed, duplicates, retry, rejected = classify(answer.get("items", []), op)
            result.indexed += len(indexed)
            result.duplicates += len(duplicates)
            result.dead += [self._dead(pending[i], status, error) for i, (status, error) in rejected.items()]
            if retry:
                item = next(iter(answer["items"][retry[0]].values()))
                last_error = (item.get("status"), item.get("error"))
            pending = [pending[i] for i in retry]
        if pending:
            status, error = last_error
            result.dead += [self._dead(d, status, f"gave up after {self.s.max_retries} retries: {error}")
                            for d in pending]
        return result

    def _backoff(self, attempt: int) -> None:
        ceiling = min(self.s.max_backoff, self.s.initial_backoff * 2 ** (attempt - 1))
        self._sleep(random.uniform(0, ceiling))  # full jitter: retries of many workers do not line up

    @staticmethod
    def _dead(doc: _Doc, status: int | None, error: Any) -> DeadLetter:
        reason = f"index rejected: {status}" if status else "index unreachable"
        detail = error if isinstance(error, str) else orjson.dumps(error).decode()
        return DeadLetter(doc.raw, reason, doc.source, doc.offset, STAGE, detail, doc.category, doc.target)


def _load(name: str, prefix: str) -> dict[str, Any]:
    body = orjson.loads((TEMPLATES / name).read_text().replace("{{prefix}}", prefix))
    body.pop("_comment", None)
    return body


def template_body(prefix: str, ilm_policy: str | None = None, data_stream: str | None = None) -> dict[str, Any]:
    """The composable index template for a prefix's indices (or its data stream), tied to an Elasticsearch
    ILM policy when there is one (OpenSearch's ISM attaches itself through the policy's ism_template)."""
    settings: dict[str, Any] = {"index.refresh_interval": "5s"}
    if ilm_policy:
        settings["index.lifecycle.name"] = ilm_policy
    body: dict[str, Any] = {
        "index_patterns": [data_stream] if data_stream else [f"{prefix}_*"],
        "priority": 200,
        "template": {"settings": settings, "mappings": _load("events-mappings.json", prefix)},
        "_meta": {"managed_by": "dpipe"},
    }
    if data_stream:
        body["data_stream"] = {}
        body["template"]["mappings"]["properties"]["@timestamp"] = {"type": "date", "format": "epoch_millis"}
    return body


def install_templates(settings: SearchSettings, prefix: str) -> list[str]:
    """Install the lifecycle policy and the index template, idempotently; returns what was installed."""
    client = _Client(settings)
    done = []
    policy = f"dpipe-{prefix}-events"
    ilm = None
    try:
        if client.kind == "elasticsearch":
            path, body, kind = f"/_ilm/policy/{policy}", _load("ilm-policy.json", prefix), "ilm"
        else:
            path, body, kind = f"/_plugins/_ism/policies/{policy}", _load("ism-policy.json", prefix), "ism"
        try:
            client.request("PUT", path, body)
            done.append(f"{kind} policy {policy}")
            ilm = policy if kind == "ilm" else None
        except Exception as err:
            status = _status_of(err)
            if status == 409:  # ISM: already there (updates need seq_no); the existing policy is kept
                done.append(f"{kind} policy {policy} (kept)")
            else:  # no lifecycle API (no ILM license, no index-management plugin): indices work without one
                log.warning("lifecycle policy %s not installed (%s): %s", policy, status, err)
        name = f"dpipe-{prefix}-events"
        client.request("PUT", f"/_index_template/{name}", template_body(prefix, ilm, settings.data_stream))
        done.append(f"index template {name}")
    finally:
        client.close()
    return done


class _WriteDoFn(beam.DoFn):
    def __init__(self, settings: SearchSettings) -> None:
        self._s = settings
        self._indexed = Metrics.counter("dpipe.index", "indexed")
        self._duplicates = Metrics.counter("dpipe.index", "duplicates")
        self._retried = Metrics.counter("dpipe.index", "retried")
        self._rejected = Metrics.counter("dpipe.index", "rejected")
        self._latency = Metrics.distribution("dpipe.index", "bulk_latency_ms")

    def setup(self) -> None:
        self._client = _Client(self._s)
        self._writer = BulkWriter(self._client, self._s)

    def process(self, element: EventBatch | dict[str, Any]) -> Iterator[Any]:
        if isinstance(element, dict):  # a computed document (a buffered counter's)
            if self._writer.add_document(element, f"counter:{element.get('counter')}"):
                yield from self._flush()
            return
        for event in element.events:
            if self._writer.add(event, element.drop):
                yield from self._flush()

    def finish_bundle(self) -> Iterator[Any]:
        for out in self._flush():
            value = out.value if isinstance(out, beam.pvalue.TaggedOutput) else out
            tag = out.tag if isinstance(out, beam.pvalue.TaggedOutput) else None
            wv = WindowedValue(value, GlobalWindow().max_timestamp(), [GlobalWindow()])
            yield beam.pvalue.TaggedOutput(tag, wv) if tag else wv

    def teardown(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()

    def _flush(self) -> Iterator[Any]:
        result = self._writer.flush()
        self._indexed.inc(result.indexed)
        self._duplicates.inc(result.duplicates)
        self._retried.inc(result.retried)
        self._rejected.inc(len(result.dead))
        for ms in result.latencies_ms:
            self._latency.update(ms)
        for letter in result.dead:
            yield beam.pvalue.TaggedOutput(DEADLETTER, letter)
        if result.indexed or result.duplicates or result.dead or result.retried:
            yield beam.pvalue.TaggedOutput(COUNTS, {"index": {
                "indexed": result.indexed, "duplicates": result.duplicates,
                "rejected": len(result.dead), "retried": result.retried,
            }})


class WriteToElasticsearch(beam.PTransform):
    """EventBatch (a route's) or computed documents -> the cluster; outputs `deadletter` and `counts`."""

    def __init__(self, settings: SearchSettings) -> None:
        super().__init__()
        self._settings = settings

    def expand(self, batches: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return batches | "Bulk" >> beam.ParDo(_WriteDoFn(self._settings)).with_outputs(DEADLETTER, COUNTS)
