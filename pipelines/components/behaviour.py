"""Behaviour and funnels component: per-user action rows from routes (transforms/behaviour.py) into the
behaviour store (`behaviour/` Parquet), and funnels over them (transforms/funnel.py, `funnels/`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import apache_beam as beam
from pydantic import Field, model_validator

from connectors.files import WriteBehaviour, behaviour_schema
from pipelines.components.base import Component, Wiring, unique
from pipelines.sections import DEFAULT_LATENESS, Section
from pipelines.validation import Duration
from transforms.behaviour import BehaviourSpec, ToBehaviour
from transforms.fields import DottedKey, flat_name
from transforms.funnel import FunnelCounts, FunnelSpec, StepSpec


class BehaviourConfig(Section):
    """Per-user action rows from a route (the original's `uid_field` / `action_field`), for the behaviour
    store and the funnels: the action is a field's value or a fixed name."""

    route: str
    user_field: DottedKey
    action_field: DottedKey | None = None
    action: str | None = Field(default=None, min_length=1)
    dimensions: list[DottedKey] = []

    @model_validator(mode="after")
    def _one_action(self) -> BehaviourConfig:
        if (self.action_field is None) == (self.action is None):
            raise ValueError("give exactly one of action_field (the action is a field's value) or action (a name)")
        return self

    def spec(self) -> BehaviourSpec:
        return BehaviourSpec(route=self.route, user_field=self.user_field, action_field=self.action_field,
                             action=self.action, dimensions=tuple(self.dimensions))


class FunnelStepConfig(Section):
    name: str = Field(min_length=1)
    action: str = Field(min_length=1)
    where: dict[str, str | list[str]] = {}  # behaviour columns: category, area or a dimension


class FunnelConfig(Section):
    """Ordered steps within `window` of the first, counted per `period` of the first step and per dimensions."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    steps: Annotated[list[FunnelStepConfig], Field(min_length=2)]
    window: Duration = 86400.0
    order: Literal["any", "strict"] = "any"
    dimensions: list[DottedKey] = []
    period: Literal["day", "week", "month"] = "day"
    allowed_lateness: Duration = DEFAULT_LATENESS

    def spec(self) -> FunnelSpec:
        steps = tuple(
            StepSpec(name=s.name, action=s.action,
                     where=tuple((flat_name(k), tuple(v) if isinstance(v, list) else (v,)) for k, v in s.where.items()))
            for s in self.steps
        )
        return FunnelSpec(name=self.name, steps=steps, window_ms=int(self.window * 1000), order=self.order,
                          dimensions=tuple(self.dimensions), period=self.period,
                          lateness_ms=int(self.allowed_lateness * 1000))


class BehaviourComponent(Component):
    sections = {"behaviour": (list[BehaviourConfig], []), "funnels": (list[FunnelConfig], [])}
    folders = ("behaviour", "funnels")
    lateness = ("funnels",)

    def validate(self, job: Any) -> None:
        columns = {"action", "category", "area"} | {flat_name(d) for b in job.behaviour for d in b.dimensions}
        if job.funnels and not job.behaviour:
            raise ValueError("funnels need a `behaviour:` section: which routes give users and actions")
        for f in job.funnels:
            used = [("dimensions", flat_name(d)) for d in f.dimensions]
            used += [(f"steps.{s.name}.where", flat_name(k)) for s in f.steps for k in s.where]
            for where, column in used:
                if column not in columns:
                    raise ValueError(f"funnels.{f.name}.{where}: {column!r} is no behaviour column; columns: "
                                     f"{', '.join(sorted(columns))} (add it to a behaviour source's dimensions)")
        unique((f.name for f in job.funnels), "funnel")
        if len({b.route for b in job.behaviour}) != len(job.behaviour):
            raise ValueError("behaviour: one source per route")

    def wire(self, job: Any, wiring: Wiring) -> None:
        if not job.behaviour:
            return
        rows = [wiring.route(b.route) | ToBehaviour(b.spec()) for b in job.behaviour] | (
            "AllBehaviour" >> beam.Flatten())
        schema = behaviour_schema(flat_name(d) for b in job.behaviour for d in b.dimensions)
        wiring.side.published(rows | "WriteBehaviour" >> WriteBehaviour(wiring.output, wiring.temp_dir, schema,
                                                                        wiring.compression))
        for funnel in job.funnels:
            wiring.write(rows | FunnelCounts(funnel.spec()), "funnels", funnel.name)
