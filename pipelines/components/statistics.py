"""Statistics component: quantiles and histograms (KLL) or the top N values per key and window
(transforms/statistics.py); rows under `stats/`."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from pipelines.components.base import Component, Wiring
from pipelines.sections import DEFAULT_LATENESS, Section
from pipelines.validation import Duration, WholeSeconds, increasing
from transforms.fields import DottedKey
from transforms.statistics import Statistics, StatsSpec


class StatisticsConfig(Section):
    """Per `by` key and `window` of event time: quantiles (and a histogram) of a numeric `field`, or the
    `top` N values of any field."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    route: str
    field: DottedKey
    by: DottedKey | None = None
    window: WholeSeconds = 3600.0
    quantiles: list[Annotated[float, Field(gt=0, lt=1)]] = [0.5, 0.9, 0.99]
    histogram: Annotated[list[float], increasing("histogram bounds")] = []
    top: Annotated[int, Field(ge=1, le=1000)] | None = None
    allowed_lateness: Duration = DEFAULT_LATENESS

    def spec(self) -> StatsSpec:
        return StatsSpec(name=self.name, field=self.field, window_s=int(self.window), by=self.by,
                         quantiles=tuple(self.quantiles), histogram=tuple(self.histogram), top=self.top,
                         lateness_s=self.allowed_lateness)


class StatisticsComponent(Component):
    sections = {"statistics": (list[StatisticsConfig], [])}
    folders = ("stats",)
    lateness = ("statistics",)

    def wire(self, job: Any, wiring: Wiring) -> None:
        for conf in job.statistics:
            wiring.write(wiring.route(conf.route) | Statistics(conf.spec()), "stats", conf.name)
