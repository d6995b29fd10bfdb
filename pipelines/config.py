"""Job configuration: one YAML file per job, validated before the pipeline starts.

Every section is optional; the embedded defaults run the demo. A bad file fails with the file, the key path
and what was expected, e.g. `job.yaml: parse.max_age: expected a duration such as 90s, 15m, 12h or 7d`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from connectors.gateway.settings import GatewaySettings
from pipelines.components import COMPONENTS
from pipelines.sections import DEFAULT_LATENESS, MatchConfig, Section
from pipelines.validation import ConfigError, Duration, Size, explain, read_yaml
from transforms.decorate import IndexNamer, Rule
from transforms.decoration import OPS, Op
from transforms.fields import DottedKey, compile_path
from transforms.route import RouteSpec

__all__ = ["ConfigError", "Duration", "JobConfig", "Size", "load_config", "parse_config"]


class ParseConfig(Section):
    """Bounds on event time, relative to the job's start; out-of-range lines become dead letters."""

    max_age: Duration | None = None
    max_future: Duration | None = None


class ReadConfig(Section):
    """How archives are cut: uncompressed files into byte ranges (the unit of parallelism), ranges into
    blocks (the unit of a batch)."""

    chunk_bytes: Size = 16 * 2**20
    block_bytes: Size = 4 * 2**20


class ArchiveConfig(Section):
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"


class IndexConfig(Section):
    """Index names: `@ym` monthly, `@yw` ISO-weekly, `@ymd` daily (UTC); `rs@ym` sets its own prefix."""

    prefix: str = Field(default="dpipe", pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    pattern: str = Field(default="@ym", pattern=r"^([a-z0-9_.-]*(@ym|@yw|@ymw|@ymd)|[a-z0-9][a-z0-9_.-]*)$")

    def namer(self) -> IndexNamer:
        return IndexNamer(self.prefix, self.pattern)


def _one_op(value: Any) -> Any:
    """An op is exactly one of `OPS`' keys; `{del: }` (no settings) is `{del: {}}`."""
    if isinstance(value, dict) and len(value) != 1:
        raise ValueError(f"an op is one of {', '.join(OPS)}; got {sorted(value) or 'nothing'}")
    if isinstance(value, dict) and next(iter(value.values())) is None:
        return {k: {} for k in value}
    return value


OpConfig = create_model(  # type: ignore[call-overload]
    "OpConfig",
    __config__=ConfigDict(extra="forbid", frozen=True, populate_by_name=True),
    __validators__={"_one": model_validator(mode="before")(classmethod(lambda cls, v: _one_op(v)))},
    **{(key if key.isidentifier() and key != "del" else f"{key}_"): (conf | None, Field(default=None, alias=key))
       for key, conf in OPS.items()},
)


def _build_op(op: Any) -> Op:
    """The op of the one key set."""
    (built,) = [conf.build() for conf in dict(op).values() if conf is not None]
    return built


class DecorateRule(Section):
    match: MatchConfig = MatchConfig()
    ops: Annotated[list[OpConfig], Field(min_length=1)]

    def build(self) -> Rule:
        has_match = self.match.category or self.match.area or self.match.where
        return Rule([_build_op(op) for op in self.ops], self.match.matcher() if has_match else None)


class RouteConfig(Section):
    """A named selection of decorated events; sinks consume routes by name. `drop` deletes fields from this
    route's copies only."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    match: MatchConfig = MatchConfig()
    drop: list[DottedKey] = []

    def build(self) -> RouteSpec:
        return RouteSpec(self.name, self.match.matcher(), tuple(compile_path(k) for k in self.drop))


class StreamConfig(Section):
    """Event time of unbounded runs (docs/architecture.md, "Event time"): an input (a category of the spool)
    holds the watermark at its latest event time less `max_out_of_order` until it has been idle for
    `idle_timeout` (longer than the slowest collector's flush interval); aggregating branches take lines up
    to `allowed_lateness` behind the watermark (each branch may set its own) and count later ones."""

    allowed_lateness: Duration = DEFAULT_LATENESS
    idle_timeout: Duration = 90.0
    max_out_of_order: Duration = 5.0


class _Job(Section):
    """The sections of the spine; every component's sections are added by `JobConfig` below."""

    name: str = Field(default="dpipe", min_length=1)
    parse: ParseConfig = ParseConfig()
    read: ReadConfig = ReadConfig()
    archive: ArchiveConfig = ArchiveConfig()
    index: IndexConfig = IndexConfig()
    decorate: list[DecorateRule] = []
    routes: list[RouteConfig] = []

    @model_validator(mode="before")
    @classmethod
    def _default_lateness(cls, data: Any) -> Any:
        """`stream.allowed_lateness` is every branch's default: filled in where a branch does not set its own."""
        stream = data.get("stream") if isinstance(data, dict) else None
        lateness = stream.get("allowed_lateness") if isinstance(stream, dict) else None
        if lateness is None:
            return data
        data = dict(data)
        for component in COMPONENTS:
            component.default_lateness(data, lateness)
        return data

    @model_validator(mode="after")
    def _components(self) -> _Job:
        """Every route a component reads exists; then each component's own checks across the job."""
        names = {r.name for r in self.routes}
        for component in COMPONENTS:
            for where, route in component.routes(self):
                if route not in names:
                    raise ValueError(f"{where}: no route named {route!r}; routes: {', '.join(sorted(names)) or 'none'}")
        for component in COMPONENTS:
            component.validate(self)
        return self

    @field_validator("routes")
    @classmethod
    def _unique(cls, routes: list[RouteConfig]) -> list[RouteConfig]:
        names = [r.name for r in routes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"route names must be unique: {', '.join(duplicates)} repeated")
        return routes

    def decorate_rules(self) -> list[Rule]:
        return [rule.build() for rule in self.decorate]

    def route_specs(self) -> list[RouteSpec]:
        return [route.build() for route in self.routes]


JobConfig = create_model(  # type: ignore[call-overload]
    "JobConfig",
    __base__=_Job,
    **{key: (model, default) for component in COMPONENTS for key, (model, default) in component.sections.items()},
    gateway=(GatewaySettings, GatewaySettings()),  # the HTTP gateway of `pipelines.stream` / `pipelines.gateway`
    stream=(StreamConfig, StreamConfig()),
)


def load_config(path: str | Path | None) -> JobConfig:
    """The job config from `path`, or the embedded defaults when `path` is None."""
    if path is None:
        return JobConfig()
    where = str(path)
    data = read_yaml(path)
    return parse_config(data, where)


def parse_config(data: Any, where: str = "<config>") -> JobConfig:
    """Validate already-loaded YAML data."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{where}: expected a mapping of sections ({', '.join(JobConfig.model_fields)}), "
            f"got {type(data).__name__}"
        )
    try:
        return JobConfig.model_validate(data)
    except ValidationError as err:
        lines = [_explain(e) for e in err.errors(include_url=False)]
        raise ConfigError(f"{where}: " + f"\n{where}: ".join(lines)) from None


_PATTERN_MEANING = {
    r"^[^.\s]+(\.[^.\s]+)*$": "expected a dotted key such as _log_info.ip",
    r"^[A-Za-z][A-Za-z0-9_-]*$": "expected a name of letters, digits, _ and -, starting with a letter",
    r"^[a-z0-9][a-z0-9_.-]*$": "expected a lowercase index prefix (a-z, 0-9, _ . -)",
    r"^([a-z0-9_.-]*(@ym|@yw|@ymw|@ymd)|[a-z0-9][a-z0-9_.-]*)$":
        "expected @ym, @yw, @ymd, a prefix before one of them (rs@ym), or a fixed lowercase name",
    r"^[A-Z]{3}$": "expected an ISO 4217 currency code such as EUR",
}


def _explain(error: dict[str, Any]) -> str:
    return explain(error, JobConfig, _PATTERN_MEANING)
