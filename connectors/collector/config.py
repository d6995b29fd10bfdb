"""The collector's config file (`python -m pipelines.collect --config FILE`), validated before anything starts.

templates/collector/collector.yaml documents every key. A mistake is one line per problem naming the file and
the key path, as for job configs: `collector.yaml: sources.0.read_from: Input should be 'beginning' or 'end'`.
"""

from __future__ import annotations

import re
import socket
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from connectors.gateway.spool import CATEGORY
from pipelines.validation import ConfigError, Duration, Size, invalid, read_yaml

GATEWAY_MAX_LINES = 100_000
"""The gateway's default `max_lines` per request: a batch never holds more."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TimeConfig(_Section):
    """Where a raw line's event time comes from: the first group of `pattern`, parsed with strptime `format`
    (naive times are in `timezone`). A line it does not match gets the time it was read (counted)."""

    pattern: str
    format: str
    timezone: str = "UTC"

    @field_validator("pattern")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as err:
            raise ValueError(f"not a valid regex: {err}") from None
        if compiled.groups < 1:
            raise ValueError("the pattern needs a group around the time, e.g. '^(\\S+ \\S+)'")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r}; expected an IANA name such as Europe/Paris") from None
        return value

    @field_validator("format")
    @classmethod
    def _format(cls, value: str) -> str:
        if "%" not in value:
            raise ValueError("expected a strptime format such as '%Y-%m-%d %H:%M:%S'")
        datetime.now().strftime(value)  # raises on a broken directive
        return value


class SourceConfig(_Section):
    """Files to tail: `paths` globs (`**` crosses folders), less `exclude` globs."""

    name: str | None = Field(default=None, min_length=1)
    paths: Annotated[list[str], Field(min_length=1)]
    exclude: list[str] = []
    category: str = "auto"
    read_from: Literal["beginning", "end"] = "beginning"
    ignore: list[str] = []
    format: Literal["als", "raw"] = "als"
    area: str | None = Field(default=None, pattern=r"^[^,\s]+$")
    time: TimeConfig | None = None  # `now` (or nothing): the time the line is read

    @field_validator("paths", "exclude", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("time", mode="before")
    @classmethod
    def _now(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "now":
            raise ValueError("expected now, or {pattern, format, timezone} to parse the time from the line")
        return None if value == "now" else value

    @field_validator("category")
    @classmethod
    def _category(cls, value: str) -> str:
        if value != "auto" and not CATEGORY.fullmatch(value):
            raise ValueError("expected auto (from the file name) or a category of letters, digits and _, "
                             "starting with a letter")
        return value

    @field_validator("ignore")
    @classmethod
    def _ignores(cls, value: list[str]) -> list[str]:
        for item in value:
            if item.startswith("re:"):
                try:
                    re.compile(item[3:])
                except re.error as err:
                    raise ValueError(f"{item!r} is not a valid regex: {err}") from None
        return value

    @model_validator(mode="after")
    def _raw_needs_area(self) -> SourceConfig:
        if self.format == "raw" and self.area is None:
            raise ValueError("format raw needs an area: the first field of the ALS lines it makes")
        if self.format == "als" and (self.area is not None or self.time is not None):
            raise ValueError("area and time are for format raw; ALS lines carry their own")
        return self

    @property
    def label(self) -> str:
        """The source's name in metrics and checkpoints."""
        return self.name or ",".join(self.paths)


class GatewayTarget(_Section):
    """Where batches go: URLs in failover order, auth, TLS, compression, timeouts."""

    urls: Annotated[list[Annotated[str, Field(pattern=r"^https?://[^/\s]+/?$")]], Field(min_length=1)]
    token: str | None = Field(default=None, min_length=16)
    token_file: Path | None = None
    ca_file: Path | None = None
    verify_tls: bool = True
    gzip: bool = False
    timeout: Duration = 30.0
    failback_after: Duration = 30.0

    @field_validator("urls", mode="before")
    @classmethod
    def _listed(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("ca_file", "token_file")
    @classmethod
    def _exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such file: {str(value)!r}")
        return value

    @model_validator(mode="after")
    def _one_token(self) -> GatewayTarget:
        if self.token is not None and self.token_file is not None:
            raise ValueError("give token or token_file, not both")
        return self

    def bearer(self) -> str | None:
        if self.token_file is not None:
            return self.token_file.read_text(encoding="utf-8").strip() or None
        return self.token


class BatchConfig(_Section):
    """A batch is one POST: contiguous lines of one file, sent when one limit is reached."""

    lines: Annotated[int, Field(gt=0, le=GATEWAY_MAX_LINES)] = 10_000
    bytes: Size = 1 * 2**20
    linger: Duration = 1.0
    max_in_flight: Annotated[int, Field(gt=0, le=64)] = 4
    max_buffer_bytes: Size | None = None

    @property
    def buffer_bytes(self) -> int:
        """Read but unacknowledged bytes at most; past it the collector stops reading (the files buffer)."""
        return self.max_buffer_bytes or 2 * self.max_in_flight * self.bytes


class RetryConfig(_Section):
    initial_backoff: Duration = 0.2
    max_backoff: Duration = 30.0


class TailConfig(_Section):
    glob_interval: Duration = 0.5
    poll_interval: Duration = 0.1
    rotate_wait: Duration = 5.0
    max_line_bytes: Size = 256 * 2**10
    partial_line_timeout: Duration = 60.0
    dead_letter_category: str = Field(default="collectorDeadLetter", pattern=CATEGORY.pattern)


class CheckpointConfig(_Section):
    path: Path
    fsync: bool = True


class MetricsConfig(_Section):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 9900
    status_interval: Duration = 60.0


class CollectorConfig(_Section):
    host: str = Field(default_factory=socket.gethostname, min_length=1)
    sources: Annotated[list[SourceConfig], Field(min_length=1)]
    gateways: GatewayTarget
    batch: BatchConfig = BatchConfig()
    retry: RetryConfig = RetryConfig()
    tail: TailConfig = Field(default=TailConfig(), validate_default=True)
    checkpoints: CheckpointConfig
    metrics: MetricsConfig | None = MetricsConfig()
    shutdown_timeout: Duration = 10.0

    @field_validator("sources")
    @classmethod
    def _distinct(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        labels = [s.label for s in sources]
        if len(set(labels)) != len(labels):
            raise ValueError("two sources have the same name (or paths): give each a distinct name")
        return sources

    @field_validator("tail")
    @classmethod
    def _line_fits_batch(cls, tail: TailConfig, info: ValidationInfo) -> TailConfig:
        batch = info.data.get("batch")
        if batch is not None and tail.max_line_bytes >= batch.bytes:
            raise ValueError(f"max_line_bytes ({tail.max_line_bytes}) must be below batch.bytes ({batch.bytes})")
        return tail


_PATTERNS = {
    r"^https?://[^/\s]+/?$": "expected a gateway base URL such as http://gw1:8080 (no path)",
    r"^[^,\s]+$": "expected an area without commas or spaces",
    CATEGORY.pattern: "expected a category of letters, digits and _, starting with a letter",
}


def load_collector_config(path: str | Path) -> CollectorConfig:
    """The collector config of `path`; every mistake is a ConfigError naming the file and key path."""
    where = str(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping with sources, gateways and checkpoints")
    try:
        return CollectorConfig.model_validate(data)
    except ValidationError as err:
        raise invalid(where, err, CollectorConfig, _PATTERNS, secrets=("token",)) from None
