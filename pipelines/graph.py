"""The one pipeline definition: raw lines in, every sink out. Bounded or unbounded is the caller's business.

`backfill.py` and `stream.py` only choose the source, the options and the runner; every branch (decoration,
routing, the archive, the analyses, the index) is wired here, once (docs/architecture.md, "Data flow").
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from functools import partial

import apache_beam as beam

from connectors.files import WriteEventsParquet, archive_rows, event_schema, join
from pipelines.components import COMPONENTS, Wiring
from pipelines.config import JobConfig
from pipelines.side_outputs import GraphOutputs, SideOutputs
from transforms.als import ParseAls, TimeBounds
from transforms.decorate import Decorate, rule_columns
from transforms.event import ArchiveRows
from transforms.route import Route
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
    side = SideOutputs()
    if decorations or job.routes:
        parsed = lines | "ParseAls" >> ParseAls(bounds)
        decorated = parsed.events | "Decorate" >> Decorate(decorations, job.index.namer())
        side.dead_letters(decorated.deadletter)
        side.counts(decorated[COUNTS])
        rows = decorated.events
    else:  # nothing but the archive reads events: parse builds its rows as columns, and no Event is made
        parsed = lines | "ParseAls" >> ParseAls(bounds, rows_of=partial(archive_rows, namer=job.index.namer()),
                                                rows_type=ArchiveRows)
        rows = parsed.events
    side.dead_letters(parsed.deadletter)
    events = rows | "ArchiveEvents" >> WriteEventsParquet(
        run.output, run.temp_dir, job.archive.compression, event_schema(rule_columns(decorations))
    )
    if job.routes:
        _route_branches(rows, job, run, side)
    return side.close(events, run.output, run.temp_dir)


def _route_branches(events: beam.PCollection, job: JobConfig, run: RunContext, side: SideOutputs) -> None:
    """Routes, and every component that reads them (pipelines/components, wired in registry order; the
    search index last, as it takes what others add to it)."""
    wanted = {route for c in COMPONENTS for _, route in c.routes(job)}
    routed = events | "Route" >> Route(job.route_specs(), emit=wanted)
    side.counts(routed[COUNTS])
    es = job.elasticsearch
    wiring = Wiring(routed, side, run.output, run.temp_dir, job.index.namer(), job.archive.compression,
                    es.settings() if es else None)
    for component in sorted(COMPONENTS, key=lambda c: c.wire_last):
        component.wire(job, wiring)
