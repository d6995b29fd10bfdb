"""Job configuration: one YAML file per job, validated before the pipeline starts.

Every section is optional; the embedded defaults run the demo. A bad file fails with the file, the key path
and what was expected, e.g. `job.yaml: parse.max_age: expected a duration such as 90s, 15m, 12h or 7d`.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from connectors.gateway.settings import GatewaySettings
from connectors.notify import ConsoleSettings, EmailSettings, Notifiers, WebhookSettings
from connectors.search import SearchSettings
from pipelines.validation import ConfigError, Duration, Size, explain, read_yaml
from transforms.alarms import RuleSpec
from transforms.behaviour import BehaviourSpec
from transforms.cardinality import DEFAULT_LG_K, CardinalitySpec
from transforms.counters import CounterSpec
from transforms.decorate import (
    BUILTIN_PATTERNS,
    DelOp,
    GeoIpOp,
    IndexNamer,
    MoneyOp,
    NormalizeOp,
    Op,
    RangeOp,
    Rule,
)
from transforms.fields import compile_path, flat_name
from transforms.funnel import FunnelSpec, StepSpec
from transforms.geoip import default_db
from transforms.lateness import DEFAULT_ALLOWED_LATENESS_S
from transforms.money import DEFAULT_RATES, EXPONENTS
from transforms.route import Condition, Matcher, RouteSpec
from transforms.statistics import StatsSpec

__all__ = ["ConfigError", "Duration", "JobConfig", "Size", "load_config", "parse_config"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParseConfig(_Section):
    """Bounds on event time, relative to the job's start; out-of-range lines become dead letters."""

    max_age: Duration | None = None
    max_future: Duration | None = None


class ReadConfig(_Section):
    """How archives are cut: uncompressed files into byte ranges (the unit of parallelism), ranges into
    blocks (the unit of a batch)."""

    chunk_bytes: Size = 16 * 2**20
    block_bytes: Size = 4 * 2**20


class ArchiveConfig(_Section):
    compression: Literal["zstd", "snappy", "gzip", "none"] = "zstd"


DottedKey = Annotated[str, Field(pattern=r"^[^.\s]+(\.[^.\s]+)*$")]
Keys = Annotated[list[DottedKey], Field(min_length=1)]
Names = Annotated[list[str], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)]


class IndexConfig(_Section):
    """Index names: `@ym` monthly, `@yw` ISO-weekly, `@ymd` daily (UTC); `rs@ym` sets its own prefix."""

    prefix: str = Field(default="dpipe", pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    pattern: str = Field(default="@ym", pattern=r"^([a-z0-9_.-]*(@ym|@yw|@ymw|@ymd)|[a-z0-9][a-z0-9_.-]*)$")

    def namer(self) -> IndexNamer:
        return IndexNamer(self.prefix, self.pattern)


class ConditionConfig(_Section):
    field: str = Field(min_length=1)
    op: Literal["==", "!=", "<", "<=", ">", ">=", "in", "not_in", "exists", "missing", "regex"] = "=="
    value: Any = None

    @model_validator(mode="after")
    def _value_fits(self) -> ConditionConfig:
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"op {self.op} needs a list value")
        if self.op == "regex":
            try:
                re.compile(str(self.value))
            except re.error as err:
                raise ValueError(f"value is not a valid regex: {err}") from None
        return self


def _where(value: Any) -> Any:
    """`where: {type: OK}` is short for `where: [{field: type, op: "==", value: OK}]`."""
    if isinstance(value, dict):
        return [{"field": k, "op": "==", "value": v} for k, v in value.items()]
    return value


class MatchConfig(_Section):
    """Which events: categories and areas (names or globs like `mongo*`), and conditions that all hold."""

    category: Names = []
    area: Names = []
    where: Annotated[list[ConditionConfig], BeforeValidator(_where)] = []

    def matcher(self) -> Matcher:
        return Matcher(
            tuple(self.category), tuple(self.area), tuple(Condition(c.field, c.op, c.value) for c in self.where)
        )


class GeoIpConfig(_Section):
    keys: Keys = ["ip", "_log_info.ip"]
    db: str | None = None
    fields: list[Literal["country", "city", "location"]] = ["country", "city", "location"]
    max_db_age: Duration | None = None
    check_interval: Duration = 60.0

    @field_validator("db")
    @classmethod
    def _db_exists(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"no GeoIP database file at {value!r}")
        return value


class RangeConfig(_Section):
    keys: Keys
    bounds: Annotated[list[float], Field(min_length=2)]

    @field_validator("bounds")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        if any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError("bounds must be strictly increasing")
        return value


Currency = Annotated[str, Field(pattern=r"^[A-Z]{3}$")]


class MoneyConfig(_Section):
    amount: DottedKey = "data.amount"
    currency: DottedKey = "data.currency"
    rates: dict[Currency, Annotated[float, Field(gt=0)]] | None = None
    exponents: dict[Currency, Annotated[int, Field(ge=0, le=4)]] = {}


class NormalizeConfig(_Section):
    keys: Keys
    patterns: list[str | dict[str, str]] = ["digit"]

    @field_validator("patterns")
    @classmethod
    def _known(cls, value: list[str | dict[str, str]]) -> list[str | dict[str, str]]:
        for item in value:
            if isinstance(item, str) and item not in BUILTIN_PATTERNS:
                raise ValueError(
                    f"unknown pattern {item!r}; built in: {', '.join(BUILTIN_PATTERNS)}, or {{name: regex}}"
                )
            if isinstance(item, dict):
                for regex in item.values():
                    try:
                        re.compile(regex)
                    except re.error as err:
                        raise ValueError(f"{regex!r} is not a valid regex: {err}") from None
        return value

    def regexes(self) -> list[str]:
        out = []
        for item in self.patterns:
            out.extend([BUILTIN_PATTERNS[item]] if isinstance(item, str) else item.values())
        return out


class DelConfig(_Section):
    keys: Keys


class OpConfig(_Section):
    """One op: exactly one of its keys."""

    geoip: GeoIpConfig | None = None
    range: RangeConfig | None = None
    money: MoneyConfig | None = None
    normalize: NormalizeConfig | None = None
    del_: DelConfig | None = Field(default=None, alias="del")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _one(cls, value: Any) -> Any:
        if isinstance(value, dict) and len(value) != 1:
            raise ValueError(f"an op is one of geoip, range, money, normalize, del; got {sorted(value) or 'nothing'}")
        if isinstance(value, dict) and next(iter(value.values())) is None:
            return {k: {} for k in value}
        return value

    def build(self) -> Op:
        if self.geoip is not None:
            g = self.geoip
            return GeoIpOp(g.keys, g.db or default_db(), g.fields, g.max_db_age, g.check_interval)
        if self.range is not None:
            return RangeOp(self.range.keys, self.range.bounds)
        if self.money is not None:
            m = self.money
            return MoneyOp(m.amount, m.currency, m.rates or DEFAULT_RATES, {**EXPONENTS, **m.exponents})
        if self.normalize is not None:
            return NormalizeOp(self.normalize.keys, self.normalize.regexes())
        assert self.del_ is not None
        return DelOp(self.del_.keys)


class DecorateRule(_Section):
    match: MatchConfig = MatchConfig()
    ops: Annotated[list[OpConfig], Field(min_length=1)]

    def build(self) -> Rule:
        has_match = self.match.category or self.match.area or self.match.where
        return Rule([op.build() for op in self.ops], self.match.matcher() if has_match else None)


class RouteConfig(_Section):
    """A named selection of decorated events; sinks consume routes by name. `drop` deletes fields from this
    route's copies only."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    match: MatchConfig = MatchConfig()
    drop: list[DottedKey] = []

    def build(self) -> RouteSpec:
        return RouteSpec(self.name, self.match.matcher(), tuple(compile_path(k) for k in self.drop))


class BatchConfig(_Section):
    docs: Annotated[int, Field(gt=0)] = 1000
    bytes: Size = 5 * 2**20
    seconds: Duration = 1.0


class RetryConfig(_Section):
    max_retries: Annotated[int, Field(ge=0, le=50)] = 8
    initial_backoff: Duration = 0.2
    max_backoff: Duration = 30.0


class ElasticsearchConfig(_Section):
    """The search-cluster sink: which routes go there, how to connect, how to batch and retry."""

    routes: Annotated[list[str], Field(min_length=1)]
    client: Literal["elasticsearch", "opensearch"] = "elasticsearch"
    hosts: Annotated[list[Annotated[str, Field(pattern=r"^https?://")]], Field(min_length=1)] = [
        "http://127.0.0.1:9200"
    ]
    api_key: str | None = None
    username: str | None = None
    password: str | None = None
    ca_file: str | None = None
    verify_certs: bool = True
    request_timeout: Duration = 30.0
    op_type: Literal["index", "create"] = "index"
    data_stream: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    batch: BatchConfig = BatchConfig()
    retry: RetryConfig = RetryConfig()

    @field_validator("ca_file")
    @classmethod
    def _ca_exists(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"no CA file at {value!r}")
        return value

    def settings(self) -> SearchSettings:
        return SearchSettings(
            tuple(self.hosts), self.client, self.api_key, self.username, self.password, self.ca_file,
            self.verify_certs, self.request_timeout, self.op_type, self.batch.docs, self.batch.bytes,
            self.batch.seconds, self.retry.max_retries, self.retry.initial_backoff, self.retry.max_backoff,
            self.data_stream,
        )


class StreamConfig(_Section):
    """Event time of unbounded runs (docs/architecture.md, "Event time"): an input (a category of the spool)
    holds the watermark at its latest event time less `max_out_of_order` until it has been idle for
    `idle_timeout` (longer than the slowest collector's flush interval); aggregating branches take lines up
    to `allowed_lateness` behind the watermark (each branch may set its own) and count later ones."""

    allowed_lateness: Duration = float(DEFAULT_ALLOWED_LATENESS_S)
    idle_timeout: Duration = 90.0
    max_out_of_order: Duration = 5.0


LATENESS_BRANCHES = ("counters", "cardinality", "statistics", "funnels")
"""Sections whose items take `allowed_lateness` (alarm rules take it in their `window`)."""


class CounterConfig(_Section):
    """A buffered counter: count (and stats of `field`) per `interval` of event time, per `by` if given."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    route: str
    interval: Duration = 60.0
    field: DottedKey | None = None
    by: DottedKey | None = None
    index: bool = True  # also write the documents to the search cluster, when one is configured
    allowed_lateness: Duration = float(DEFAULT_ALLOWED_LATENESS_S)

    @field_validator("interval")
    @classmethod
    def _whole_seconds(cls, value: float) -> float:
        if value < 1 or value != int(value):
            raise ValueError("expected a whole number of seconds, at least 1s")
        return value

    def spec(self) -> CounterSpec:
        return CounterSpec(self.name, int(self.interval), self.field, self.by, self.allowed_lateness)


class CardinalityConfig(_Section):
    """Distinct values of `field` per `by` key and calendar period (HyperLogLog), in a timezone."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    route: str
    field: DottedKey
    by: DottedKey | None = None
    periods: Annotated[list[Literal["day", "week", "month"]], Field(min_length=1)] = ["day", "week", "month"]
    timezone: str = "UTC"
    lg_k: Annotated[int, Field(ge=8, le=21)] = DEFAULT_LG_K
    allowed_lateness: Duration = float(DEFAULT_ALLOWED_LATENESS_S)

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
        return CardinalitySpec(self.name, self.field, self.by, tuple(self.periods), self.timezone, self.lg_k,
                               self.allowed_lateness)


class StatisticsConfig(_Section):
    """Per `by` key and `window` of event time: quantiles (and a histogram) of a numeric `field`, or the
    `top` N values of any field."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    route: str
    field: DottedKey
    by: DottedKey | None = None
    window: Duration = 3600.0
    quantiles: list[Annotated[float, Field(gt=0, lt=1)]] = [0.5, 0.9, 0.99]
    histogram: list[float] = []
    top: Annotated[int, Field(ge=1, le=1000)] | None = None
    allowed_lateness: Duration = float(DEFAULT_ALLOWED_LATENESS_S)

    @field_validator("histogram")
    @classmethod
    def _increasing(cls, value: list[float]) -> list[float]:
        if any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError("histogram bounds must be strictly increasing")
        return value

    @field_validator("window")
    @classmethod
    def _whole_seconds(cls, value: float) -> float:
        if value < 1 or value != int(value):
            raise ValueError("expected a whole number of seconds, at least 1s")
        return value

    def spec(self) -> StatsSpec:
        return StatsSpec(self.name, self.field, int(self.window), self.by, tuple(self.quantiles),
                         tuple(self.histogram), self.top, self.allowed_lateness)


class AlarmWindow(_Section):
    """Sliding windows of event time; in a stream, partials up to `allowed_lateness` behind a window's end
    still count (and may fire it late)."""

    size: Duration = 300.0
    period: Duration = 60.0
    allowed_lateness: Duration = float(DEFAULT_ALLOWED_LATENESS_S)

    @model_validator(mode="after")
    def _fits(self) -> AlarmWindow:
        if self.period < 1 or self.period != int(self.period) or self.size != int(self.size):
            raise ValueError("size and period must be whole seconds, period at least 1s")
        if self.size < self.period or int(self.size) % int(self.period):
            raise ValueError("size must be a multiple of period")
        return self


class AlarmCondition(_Section):
    """A threshold (`op`, `threshold`) or an abnormal change against the previous window (`change_percent`
    over at least `min_base`)."""

    op: Literal[">=", ">", "<=", "<"] = ">="
    threshold: float | None = None
    change_percent: Annotated[float, Field(gt=0)] | None = None
    min_base: Annotated[float, Field(ge=0)] = 1.0

    @model_validator(mode="after")
    def _one(self) -> AlarmCondition:
        if (self.threshold is None) == (self.change_percent is None):
            raise ValueError("give either threshold or change_percent")
        return self


class AlarmRule(_Section):
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    route: str
    where: Annotated[list[ConditionConfig], BeforeValidator(_where)] = []
    ignore: list[str] = []
    ignore_field: DottedKey = "message"
    group_by: list[DottedKey] = []
    window: AlarmWindow = AlarmWindow()
    aggregate: Literal["count", "sum", "mean", "distinct"] = "count"
    field: DottedKey | None = None
    condition: AlarmCondition
    severity: Annotated[int, Field(ge=1, le=5)] = 3
    cooldown: Duration = 0.0
    samples: Annotated[int, Field(ge=0, le=20)] = 3

    @field_validator("ignore")
    @classmethod
    def _regexes(cls, value: list[str]) -> list[str]:
        for regex in value:
            try:
                re.compile(regex)
            except re.error as err:
                raise ValueError(f"{regex!r} is not a valid regex: {err}") from None
        return value

    @model_validator(mode="after")
    def _field_needed(self) -> AlarmRule:
        if self.aggregate != "count" and self.field is None:
            raise ValueError(f"aggregate {self.aggregate} needs a field")
        return self

    def spec(self) -> RuleSpec:
        c = self.condition
        where = MatchConfig(where=self.where).matcher() if self.where else None
        return RuleSpec(
            self.name, int(self.window.size), int(self.window.period), self.aggregate, self.field,
            tuple(self.group_by), where, tuple(self.ignore), self.ignore_field, c.op, c.threshold,
            c.change_percent, c.min_base, self.severity, int(self.cooldown), self.samples,
            int(self.window.allowed_lateness),
        )


class ConsoleConfig(_Section):
    beep_severity: Annotated[int, Field(ge=1, le=6)] = 4
    colour: bool = True


class WebhookConfig(_Section):
    url: Annotated[str, Field(pattern=r"^https?://")]
    timeout: Duration = 10.0
    max_retries: Annotated[int, Field(ge=0, le=20)] = 4
    headers: dict[str, str] = {}


class EmailConfig(_Section):
    host: str
    port: Annotated[int, Field(ge=1, le=65535)] = 25
    sender: str = "dpipe@localhost"
    to: Annotated[list[str], Field(min_length=1)]
    username: str | None = None
    password: str | None = None
    starttls: bool = False
    ssl: bool = False
    pools: list[Annotated[list[Annotated[int, Field(ge=1, le=5)]], Field(min_length=2, max_length=2)]] = [
        [4, 5], [1, 3]]
    min_interval: Duration = 300.0
    quiet_hours: Annotated[list[Annotated[int, Field(ge=0, le=23)]], Field(min_length=2, max_length=2)] | None = None
    urgent_severity: Annotated[int, Field(ge=1, le=5)] = 5
    timezone: str = "UTC"


class AlarmsConfig(_Section):
    rules: Annotated[list[AlarmRule], Field(min_length=1)]
    console: ConsoleConfig | None = ConsoleConfig()
    webhook: WebhookConfig | None = None
    email: EmailConfig | None = None

    def notifiers(self) -> Notifiers:
        e = self.email
        return Notifiers(
            ConsoleSettings(self.console.beep_severity, self.console.colour) if self.console else None,
            WebhookSettings(self.webhook.url, self.webhook.timeout, self.webhook.max_retries,
                            tuple(self.webhook.headers.items())) if self.webhook else None,
            EmailSettings(e.host, e.port, e.sender, tuple(e.to), e.username, e.password, e.starttls, e.ssl,
                          tuple((a, b) for a, b in e.pools), e.min_interval,
                          tuple(e.quiet_hours) if e.quiet_hours else None, e.urgent_severity, e.timezone)
            if e else None,
        )


class BehaviourConfig(_Section):
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
        return BehaviourSpec(self.route, self.user_field, self.action_field, self.action, tuple(self.dimensions))


class FunnelStepConfig(_Section):
    name: str = Field(min_length=1)
    action: str = Field(min_length=1)
    where: dict[str, str | list[str]] = {}  # behaviour columns: category, area or a dimension


class FunnelConfig(_Section):
    """Ordered steps within `window` of the first, counted per `period` of the first step and per dimensions."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    steps: Annotated[list[FunnelStepConfig], Field(min_length=2)]
    window: Duration = 86400.0
    order: Literal["any", "strict"] = "any"
    dimensions: list[DottedKey] = []
    period: Literal["day", "week", "month"] = "day"
    allowed_lateness: Duration = float(DEFAULT_ALLOWED_LATENESS_S)

    def spec(self) -> FunnelSpec:
        steps = tuple(
            StepSpec(s.name, s.action, tuple((flat_name(k), tuple(v) if isinstance(v, list) else (v,))
                                              for k, v in s.where.items()))
            for s in self.steps
        )
        return FunnelSpec(self.name, steps, int(self.window * 1000), self.order, tuple(self.dimensions),
                          self.period, int(self.allowed_lateness * 1000))


class JobConfig(_Section):
    name: str = Field(default="dpipe", min_length=1)
    parse: ParseConfig = ParseConfig()
    read: ReadConfig = ReadConfig()
    archive: ArchiveConfig = ArchiveConfig()
    index: IndexConfig = IndexConfig()
    decorate: list[DecorateRule] = []
    routes: list[RouteConfig] = []
    elasticsearch: ElasticsearchConfig | None = None
    counters: list[CounterConfig] = []
    cardinality: list[CardinalityConfig] = []
    statistics: list[StatisticsConfig] = []
    alarms: AlarmsConfig | None = None
    behaviour: list[BehaviourConfig] = []
    funnels: list[FunnelConfig] = []
    gateway: GatewaySettings = GatewaySettings()  # the HTTP gateway of `pipelines.stream` / `pipelines.gateway`
    stream: StreamConfig = StreamConfig()

    @model_validator(mode="before")
    @classmethod
    def _default_lateness(cls, data: Any) -> Any:
        """`stream.allowed_lateness` is every branch's default: filled in where a branch does not set its own."""
        stream = data.get("stream") if isinstance(data, dict) else None
        lateness = stream.get("allowed_lateness") if isinstance(stream, dict) else None
        if lateness is None:
            return data
        data = dict(data)
        for section in LATENESS_BRANCHES:
            items = data.get(section)
            if isinstance(items, list):
                data[section] = [{"allowed_lateness": lateness, **i} if isinstance(i, dict) else i for i in items]
        alarms = data.get("alarms")
        if isinstance(alarms, dict) and isinstance(alarms.get("rules"), list):
            rules = []
            for rule in alarms["rules"]:
                if isinstance(rule, dict) and isinstance(rule.get("window", {}), dict):
                    rule = {**rule, "window": {"allowed_lateness": lateness, **rule.get("window", {})}}
                rules.append(rule)
            data["alarms"] = {**alarms, "rules": rules}
        return data

    @model_validator(mode="after")
    def _funnels_read_behaviour(self) -> JobConfig:
        columns = {"action", "category", "area"} | {flat_name(d) for b in self.behaviour for d in b.dimensions}
        if self.funnels and not self.behaviour:
            raise ValueError("funnels need a `behaviour:` section: which routes give users and actions")
        for f in self.funnels:
            used = [("dimensions", flat_name(d)) for d in f.dimensions]
            used += [(f"steps.{s.name}.where", flat_name(k)) for s in f.steps for k in s.where]
            for where, column in used:
                if column not in columns:
                    raise ValueError(f"funnels.{f.name}.{where}: {column!r} is no behaviour column; columns: "
                                     f"{', '.join(sorted(columns))} (add it to a behaviour source's dimensions)")
        if len({f.name for f in self.funnels}) != len(self.funnels):
            raise ValueError("funnel names must be unique")
        if len({b.route for b in self.behaviour}) != len(self.behaviour):
            raise ValueError("behaviour: one source per route")
        return self

    @model_validator(mode="after")
    def _known_routes(self) -> JobConfig:
        names = {r.name for r in self.routes}
        wanted = [("elasticsearch.routes", r) for r in (self.elasticsearch.routes if self.elasticsearch else [])]
        wanted += [(f"counters.{c.name}.route", c.route) for c in self.counters]
        wanted += [(f"cardinality.{c.name}.route", c.route) for c in self.cardinality]
        wanted += [(f"statistics.{c.name}.route", c.route) for c in self.statistics]
        wanted += [(f"alarms.rules.{r.name}.route", r.route) for r in (self.alarms.rules if self.alarms else [])]
        wanted += [(f"behaviour.{b.route}.route", b.route) for b in self.behaviour]
        for where, route in wanted:
            if route not in names:
                raise ValueError(f"{where}: no route named {route!r}; routes: {', '.join(sorted(names)) or 'none'}")
        counter_names = [c.name for c in self.counters]
        if len(set(counter_names)) != len(counter_names):
            raise ValueError("counter names must be unique")
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
