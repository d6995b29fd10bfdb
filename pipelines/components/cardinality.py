"""Cardinality component: distinct values per key and calendar period, HyperLogLog
(transforms/cardinality.py); rows under `cardinality/`."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator

from pipelines.components.base import Component, Wiring
from pipelines.sections import DEFAULT_LATENESS, Section
from pipelines.validation import Duration
from transforms.cardinality import DEFAULT_LG_K, Cardinality, CardinalitySpec
from transforms.fields import DottedKey


class CardinalityConfig(Section):
    """Distinct values of `field` per `by` key and calendar period (HyperLogLog), in a timezone."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    route: str
    field: DottedKey
    by: DottedKey | None = None
    periods: Annotated[list[Literal["day", "week", "month"]], Field(min_length=1)] = ["day", "week", "month"]
    timezone: str = "UTC"
    lg_k: Annotated[int, Field(ge=8, le=21)] = DEFAULT_LG_K
    allowed_lateness: Duration = DEFAULT_LATENESS

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        if value != "UTC":
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown timezone {value!r}; expected an IANA name such as Asia/Shanghai") from None
        return value

    def spec(self) -> CardinalitySpec:
        return CardinalitySpec(name=self.name, field=self.field, by=self.by, periods=tuple(self.periods),
                               timezone=self.timezone, lg_k=self.lg_k, lateness_s=self.allowed_lateness)


class CardinalityComponent(Component):
    sections = {"cardinality": (list[CardinalityConfig], [])}
    folders = ("cardinality",)
    lateness = ("cardinality",)

    def wire(self, job: Any, wiring: Wiring) -> None:
        for conf in job.cardinality:
            wiring.write(wiring.route(conf.route) | Cardinality(conf.spec()), "cardinality", conf.name)
