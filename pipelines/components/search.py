"""Search index component: the routes it names and the documents other components add (counters) go to
Elasticsearch or OpenSearch (connectors/search.py); failures become dead letters, counts the `index` section."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any, Literal

import apache_beam as beam
from pydantic import Field

from connectors.search import SearchSettings, WriteToElasticsearch
from connectors.summary import top_counts
from pipelines.components.base import Component, Wiring
from pipelines.sections import Section
from pipelines.validation import Duration, Size, existing_file
from transforms.tags import COUNTS


class BatchConfig(Section):
    docs: Annotated[int, Field(gt=0)] = 1000
    bytes: Size = 5 * 2**20
    seconds: Duration = 1.0


class RetryConfig(Section):
    max_retries: Annotated[int, Field(ge=0, le=50)] = 8
    initial_backoff: Duration = 0.2
    max_backoff: Duration = 30.0


class ElasticsearchConfig(Section):
    """The search-cluster sink: which routes go there, how to connect, how to batch and retry."""

    routes: Annotated[list[str], Field(min_length=1)]
    client: Literal["elasticsearch", "opensearch"] = "elasticsearch"
    hosts: Annotated[list[Annotated[str, Field(pattern=r"^https?://")]], Field(min_length=1)] = [
        "http://127.0.0.1:9200"
    ]
    api_key: str | None = None
    username: str | None = None
    password: str | None = None
    ca_file: Annotated[str | None, existing_file("CA file")] = None
    verify_certs: bool = True
    request_timeout: Duration = 30.0
    op_type: Literal["index", "create"] = "index"
    data_stream: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    batch: BatchConfig = BatchConfig()
    retry: RetryConfig = RetryConfig()

    def settings(self) -> SearchSettings:
        return SearchSettings(
            hosts=tuple(self.hosts), client=self.client, api_key=self.api_key, username=self.username,
            password=self.password, ca_file=self.ca_file, verify_certs=self.verify_certs,
            request_timeout=self.request_timeout, op_type=self.op_type, max_docs=self.batch.docs,
            max_bytes=self.batch.bytes, max_seconds=self.batch.seconds, max_retries=self.retry.max_retries,
            initial_backoff=self.retry.initial_backoff, max_backoff=self.retry.max_backoff,
            data_stream=self.data_stream,
        )


class SearchIndex(Component):
    sections = {"elasticsearch": (ElasticsearchConfig | None, None)}
    folders = ("index",)
    wire_last = True

    def summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        return {}

    def summary_lines(self, summary: dict[str, Any]) -> list[str]:
        counts = summary.get("index")
        return [f"  indexed       {top_counts(counts)}"] if counts else []

    def routes(self, job: Any) -> Iterator[tuple[str, str]]:
        return (("elasticsearch.routes", r) for r in (job.elasticsearch.routes if job.elasticsearch else []))

    def wire(self, job: Any, wiring: Wiring) -> None:
        es = job.elasticsearch
        if es is None:
            return
        to_index = [wiring.route(name) for name in es.routes] + wiring.to_index
        indexed = to_index | "ToIndex" >> beam.Flatten() | "Index" >> WriteToElasticsearch(es.settings())
        wiring.side.dead_letters(indexed.deadletter)
        wiring.side.counts(indexed[COUNTS])
