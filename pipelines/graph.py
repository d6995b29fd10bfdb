"""The one pipeline definition: raw lines in, every sink out. Bounded or unbounded is the caller's business.

`backfill.py` and `stream.py` only choose the source, the options and the runner; every branch (decoration,
routing, the archive, the analyses, the index) is wired here, once (docs/architecture.md, "Data flow").
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import apache_beam as beam

from connectors.files import (
    WriteBehaviour,
    WriteEventsParquet,
    WriteJsonRows,
    behaviour_schema,
    event_schema,
    join,
)
from connectors.notify import Notify
from connectors.search import WriteToElasticsearch
from pipelines.config import JobConfig
from pipelines.side_outputs import GraphOutputs, SideOutputs
from transforms.alarms import Alarms
from transforms.als import ParseAls, TimeBounds
from transforms.behaviour import ToBehaviour
from transforms.cardinality import Cardinality
from transforms.counters import BufferedCounter
from transforms.decorate import Decorate, rule_columns
from transforms.fields import flat_name
from transforms.funnel import FunnelCounts
from transforms.route import Route, route_tag
from transforms.statistics import Statistics
from transforms.tags import COUNTS


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


def build(lines: beam.PCollection, job: JobConfig, run: RunContext) -> GraphOutputs:
    """Wire every branch onto a PCollection of LineBatch: parse, decorate, archive, route, the sinks."""
    bounds = TimeBounds.around(run.now_ms, job.parse.max_age, job.parse.max_future)
    decorations = job.decorate_rules()
    parsed = lines | "ParseAls" >> ParseAls(bounds)
    decorated = parsed.events | "Decorate" >> Decorate(decorations, job.index.namer())
    events = decorated.events | "ArchiveEvents" >> WriteEventsParquet(
        run.output, run.temp_dir, job.archive.compression, event_schema(rule_columns(decorations))
    )
    side = SideOutputs()
    side.dead_letters(parsed.deadletter)
    side.dead_letters(decorated.deadletter)
    side.counts(decorated[COUNTS])
    if job.routes:
        _route_branches(decorated.events, job, run, side)
    return side.close(events, run.output, run.temp_dir)


def _route_branches(events: beam.PCollection, job: JobConfig, run: RunContext, side: SideOutputs) -> None:
    """Routes, and every sink that reads them: counters, cardinality, statistics, alarms, the index."""
    es = job.elasticsearch
    alarm_rules = job.alarms.rules if job.alarms else []
    readers = [*job.counters, *job.cardinality, *job.statistics, *alarm_rules, *job.behaviour]
    routed = events | "Route" >> Route(job.route_specs(), emit=set(es.routes if es else ()) | {
        r.route for r in readers})
    side.counts(routed[COUNTS])

    def write(results: beam.PCollection, sink: str, name: str) -> None:
        side.published(results | f"Write[{sink}/{name}]" >> WriteJsonRows(sink, run.output, run.temp_dir))

    to_index = [routed[route_tag(name)] for name in (es.routes if es else ())]
    for counter in job.counters:
        docs = routed[route_tag(counter.route)] | BufferedCounter(counter.spec(), job.index.namer())
        write(docs, "counters", counter.name)
        if es and counter.index:
            to_index.append(docs)
    for conf in job.cardinality:
        write(routed[route_tag(conf.route)] | Cardinality(conf.spec()), "cardinality", conf.name)
    for conf in job.statistics:
        write(routed[route_tag(conf.route)] | Statistics(conf.spec()), "stats", conf.name)
    for route in sorted({r.route for r in alarm_rules}):
        alarms = routed[route_tag(route)] | Alarms(f"Alarms[{route}]", [r.spec() for r in alarm_rules
                                                                         if r.route == route])
        write(alarms | f"Notify[{route}]" >> Notify(job.alarms.notifiers()), "alarms", route)
    if job.behaviour:
        rows = [routed[route_tag(b.route)] | ToBehaviour(b.spec()) for b in job.behaviour] | (
            "AllBehaviour" >> beam.Flatten())
        schema = behaviour_schema(flat_name(d) for b in job.behaviour for d in b.dimensions)
        side.published(rows | "WriteBehaviour" >> WriteBehaviour(run.output, run.temp_dir, schema,
                                                                 job.archive.compression))
        for funnel in job.funnels:
            write(rows | FunnelCounts(funnel.spec()), "funnels", funnel.name)
    if es and to_index:
        indexed = to_index | "ToIndex" >> beam.Flatten() | "Index" >> WriteToElasticsearch(es.settings())
        side.dead_letters(indexed.deadletter)
        side.counts(indexed[COUNTS])
