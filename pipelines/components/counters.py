"""Counters component: a buffered count (and stats of a field) per interval of event time
(transforms/counters.py); rows under `counters/`, and in the search cluster when one is configured."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from pipelines.components.base import Component, Wiring, unique
from pipelines.sections import DEFAULT_LATENESS, Section
from pipelines.validation import Duration, WholeSeconds
from transforms.counters import BufferedCounter, CounterSpec
from transforms.fields import DottedKey


class CounterConfig(Section):
    """A buffered counter: count (and stats of `field`) per `interval` of event time, per `by` if given."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    route: str
    interval: WholeSeconds = 60.0
    field: DottedKey | None = None
    by: DottedKey | None = None
    index: bool = True  # also write the documents to the search cluster, when one is configured
    allowed_lateness: Duration = DEFAULT_LATENESS

    def spec(self) -> CounterSpec:
        return CounterSpec(name=self.name, interval_s=int(self.interval), field=self.field, by=self.by,
                           lateness_s=self.allowed_lateness)


class Counters(Component):
    sections = {"counters": (list[CounterConfig], [])}
    folders = ("counters",)
    lateness = ("counters",)

    def validate(self, job: Any) -> None:
        unique((c.name for c in job.counters), "counter")

    def wire(self, job: Any, wiring: Wiring) -> None:
        for counter in job.counters:
            docs = wiring.route(counter.route) | BufferedCounter(counter.spec(), wiring.namer)
            wiring.write(docs, "counters", counter.name)
            if wiring.search is not None and counter.index:
                wiring.to_index.append(docs)
