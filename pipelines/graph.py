"""The one pipeline definition: raw lines in, every sink out. Bounded or unbounded is the caller's business.

`backfill.py` (and later `stream.py`) only choose the source, the options and the runner; every branch the
later issues add (decoration, routing, index, alarms, ...) is wired here, once.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import apache_beam as beam

from connectors.files import WriteDeadLetters, WriteEventsParquet, join
from pipelines.config import JobConfig
from transforms.als import ParseAls, TimeBounds


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
    """The published files of each sink (PCollections of WrittenFile)."""

    events: beam.PCollection
    dead_letters: beam.PCollection

    def written(self) -> tuple[beam.PCollection, ...]:
        return (self.events, self.dead_letters)


def build(lines: beam.PCollection, job: JobConfig, run: RunContext) -> GraphOutputs:
    """Wire every branch onto a PCollection of LineBatch."""
    bounds = TimeBounds.around(run.now_ms, job.parse.max_age, job.parse.max_future)
    parsed = lines | "ParseAls" >> ParseAls(bounds)
    events = parsed.events | "ArchiveEvents" >> WriteEventsParquet(
        run.output, run.temp_dir, job.archive.compression
    )
    dead = parsed.deadletter | "WriteDeadLetters" >> WriteDeadLetters(run.output, run.temp_dir)
    return GraphOutputs(events=events, dead_letters=dead)
