"""The one pipeline definition: raw lines in, every sink out. Bounded or unbounded is the caller's business.

`backfill.py` (and later `stream.py`) only choose the source, the options and the runner; every branch the
later issues add (decoration, routing, index, alarms, ...) is wired here, once.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import apache_beam as beam

from connectors.files import WriteDeadLetters, WriteEventsParquet, WriteJsonRows, event_schema, join
from connectors.notify import Notify
from connectors.search import WriteToElasticsearch
from pipelines.config import JobConfig
from transforms.alarms import Alarms
from transforms.als import ParseAls, TimeBounds
from transforms.cardinality import Cardinality
from transforms.counters import BufferedCounter
from transforms.decorate import COUNTS, Decorate, rule_columns
from transforms.route import Route, route_tag
from transforms.statistics import Statistics


@dataclass(frozen=True)
class RunContext:
    """Facts fixed once when the pipeline is built, so that every worker agrees on them."""

    output: str
    run_id: str
    now_ms: int

    @classmethod
    def new(cls, output: str) -> RunContext:
        return cls(output.rstrip("/") or "/", uuid.uuid4().hex[:12], int(time.time() * 1000))

    @property
    def temp_dir(self) -> str:
        return join(self.output, ".dpipe-tmp", self.run_id)


@dataclass(frozen=True)
class GraphOutputs:
    """What the graph produced: published files of each sink (WrittenFile) and count dicts for the summary."""

    events: beam.PCollection
    dead_letters: beam.PCollection
    counts: tuple[beam.PCollection, ...]
    others: tuple[beam.PCollection, ...] = ()  # published files of the other sinks (counters/...)

    def written(self) -> tuple[beam.PCollection, ...]:
        return (self.events, self.dead_letters, *self.others)


def build(lines: beam.PCollection, job: JobConfig, run: RunContext) -> GraphOutputs:
    """Wire every branch onto a PCollection of LineBatch: parse, decorate, archive, route."""
    bounds = TimeBounds.around(run.now_ms, job.parse.max_age, job.parse.max_future)
    rules = job.decorate_rules()
    parsed = lines | "ParseAls" >> ParseAls(bounds)
    decorated = parsed.events | "Decorate" >> Decorate(rules, job.index.namer())
    events = decorated.events | "ArchiveEvents" >> WriteEventsParquet(
        run.output, run.temp_dir, job.archive.compression, event_schema(rule_columns(rules))
    )
    dead_letters = [parsed.deadletter, decorated.deadletter]
    counts = [decorated[COUNTS]]
    others = []
    routes = job.route_specs()
    if routes:
        es = job.elasticsearch
        rules = job.alarms.rules if job.alarms else []
        analyses = [*job.counters, *job.cardinality, *job.statistics, *rules]
        consumed = set(es.routes if es else ()) | {a.route for a in analyses}
        routed = decorated.events | "Route" >> Route(routes, emit=consumed)
        counts.append(routed[COUNTS])
        to_index = [routed[route_tag(name)] for name in (es.routes if es else ())]
        for counter in job.counters:
            docs = routed[route_tag(counter.route)] | BufferedCounter(counter.spec(), job.index.namer())
            others.append(docs | f"WriteCounter[{counter.name}]" >> WriteJsonRows("counters", run.output, run.temp_dir))
            if es and counter.index:
                to_index.append(docs)
        for sink, configs, transform in (("cardinality", job.cardinality, Cardinality),
                                         ("stats", job.statistics, Statistics)):
            for conf in configs:
                results = routed[route_tag(conf.route)] | transform(conf.spec())
                others.append(results | f"Write[{sink}/{conf.name}]" >> WriteJsonRows(sink, run.output, run.temp_dir))
        if job.alarms:
            for route in sorted({r.route for r in rules}):
                specs = [r.spec() for r in rules if r.route == route]
                alarms = routed[route_tag(route)] | Alarms(f"Alarms[{route}]", specs)
                notified = alarms | f"Notify[{route}]" >> Notify(job.alarms.notifiers())
                others.append(notified | f"Write[alarms/{route}]" >> WriteJsonRows("alarms", run.output,
                                                                                 run.temp_dir))
        if es and to_index:
            indexed = to_index | "ToIndex" >> beam.Flatten() | "Index" >> WriteToElasticsearch(es.settings())
            dead_letters.append(indexed.deadletter)
            counts.append(indexed[COUNTS])
    dead = (
        dead_letters
        | "AllDeadLetters" >> beam.Flatten()
        | "WriteDeadLetters" >> WriteDeadLetters(run.output, run.temp_dir)
    )
    return GraphOutputs(events, dead, tuple(counts), tuple(others))
