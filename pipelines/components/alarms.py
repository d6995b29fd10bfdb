"""Alarms component: sliding-window rules over a route (transforms/alarms.py), notified through the console,
email and webhooks (connectors/notify.py); rows under `alarms/`. Its notifiers serve other components too."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from connectors.notify import ConsoleSettings, EmailSettings, Notifiers, Notify, WebhookSettings
from pipelines.components.base import Component, Wiring
from pipelines.sections import DEFAULT_LATENESS, ConditionConfig, MatchConfig, Section, where_list
from pipelines.validation import Duration
from transforms.alarms import Alarms, RuleSpec
from transforms.fields import DottedKey


class AlarmWindow(Section):
    """Sliding windows of event time; in a stream, partials up to `allowed_lateness` behind a window's end
    still count (and may fire it late)."""

    size: Duration = 300.0
    period: Duration = 60.0
    allowed_lateness: Duration = DEFAULT_LATENESS

    @model_validator(mode="after")
    def _fits(self) -> AlarmWindow:
        if self.period < 1 or self.period != int(self.period) or self.size != int(self.size):
            raise ValueError("size and period must be whole seconds, period at least 1s")
        if self.size < self.period or int(self.size) % int(self.period):
            raise ValueError("size must be a multiple of period")
        return self


class AlarmCondition(Section):
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


class AlarmRule(Section):
    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    route: str
    where: Annotated[list[ConditionConfig], BeforeValidator(where_list)] = []
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
            name=self.name, size_s=int(self.window.size), period_s=int(self.window.period),
            aggregate=self.aggregate, field=self.field, group_by=tuple(self.group_by), where=where,
            ignore=tuple(self.ignore), ignore_field=self.ignore_field, op=c.op, threshold=c.threshold,
            change_percent=c.change_percent, min_base=c.min_base, severity=self.severity,
            cooldown_s=int(self.cooldown), samples=self.samples, lateness_s=int(self.window.allowed_lateness),
        )


class ConsoleConfig(Section):
    beep_severity: Annotated[int, Field(ge=1, le=6)] = 4
    colour: bool = True


class WebhookConfig(Section):
    url: Annotated[str, Field(pattern=r"^https?://")]
    timeout: Duration = 10.0
    max_retries: Annotated[int, Field(ge=0, le=20)] = 4
    headers: dict[str, str] = {}


class EmailConfig(Section):
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


class AlarmsConfig(Section):
    rules: Annotated[list[AlarmRule], Field(min_length=1)]
    console: ConsoleConfig | None = ConsoleConfig()
    webhook: WebhookConfig | None = None
    email: EmailConfig | None = None

    def notifiers(self) -> Notifiers:
        e = self.email
        return Notifiers(
            console=ConsoleSettings(beep_severity=self.console.beep_severity, colour=self.console.colour)
            if self.console else None,
            webhook=WebhookSettings(url=self.webhook.url, timeout=self.webhook.timeout,
                                    max_retries=self.webhook.max_retries, headers=tuple(self.webhook.headers.items()))
            if self.webhook else None,
            email=EmailSettings(
                host=e.host, port=e.port, sender=e.sender, to=tuple(e.to), username=e.username, password=e.password,
                starttls=e.starttls, ssl=e.ssl, pools=tuple((a, b) for a, b in e.pools), min_interval_s=e.min_interval,
                quiet_hours=(e.quiet_hours[0], e.quiet_hours[1]) if e.quiet_hours else None,
                urgent_severity=e.urgent_severity, timezone=e.timezone,
            ) if e else None,
        )


class AlarmsComponent(Component):
    sections = {"alarms": (AlarmsConfig | None, None)}
    folders = ("alarms",)

    def routes(self, job: Any) -> Iterator[tuple[str, str]]:
        return ((f"alarms.rules.{r.name}.route", r.route) for r in (job.alarms.rules if job.alarms else []))

    def default_lateness(self, data: dict[str, Any], lateness: Any) -> None:
        """Alarm rules take it in their `window`."""
        alarms = data.get("alarms")
        if isinstance(alarms, dict) and isinstance(alarms.get("rules"), list):
            rules = []
            for rule in alarms["rules"]:
                if isinstance(rule, dict) and isinstance(rule.get("window", {}), dict):
                    rule = {**rule, "window": {"allowed_lateness": lateness, **rule.get("window", {})}}
                rules.append(rule)
            data["alarms"] = {**alarms, "rules": rules}

    def wire(self, job: Any, wiring: Wiring) -> None:
        if job.alarms is None:
            return
        rules = job.alarms.rules
        for route in sorted({r.route for r in rules}):
            alarms = wiring.route(route) | Alarms(f"Alarms[{route}]", [r.spec() for r in rules if r.route == route])
            wiring.write(alarms | f"Notify[{route}]" >> Notify(job.alarms.notifiers()), "alarms", route)
