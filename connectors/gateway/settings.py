"""The gateway's settings: the `gateway:` section of a job config, read by the one config loader
(`pipelines.validation`), so sizes and durations take units (`max_body_bytes: 16MiB`, `read_timeout: 10s`)
exactly as the job's other sections do, and a mistake is `file: gateway.key: what was expected`, exit 2.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from connectors.gateway.spool import SpoolWriter
from pipelines.validation import ConfigError, Duration, Size, invalid, read_yaml

Seconds = Annotated[Duration, Field(gt=0)]
"""A positive duration: `10s`, `1h`, or a number of seconds."""


class TokenSettings(BaseModel):
    """A bearer token of one project, allowed to post to the categories matching its globs (matched on the
    archive's camel-case names, see `camel_case_glob`), at most `max_requests_per_second` (burst: one
    second's worth) when set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    project: str = Field(min_length=1)
    token: str = Field(min_length=16)
    categories: list[str] = Field(default=["*"], min_length=1)
    max_requests_per_second: float | None = Field(default=None, gt=0)


class GatewaySettings(BaseModel):
    """The `gateway:` section of a job config. With no tokens, auth is off. Memory is bounded by
    max_in_flight_bytes (bodies as received plus decompressed; about 3x that at peak, measured): a post
    that would pass it, or more than max_in_flight concurrent posts, gets 429. A body that pauses for
    read_timeout or takes longer than body_timeout in all gets 408."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    spool: Path | None = None
    spool_url: str | None = Field(default=None, pattern=r"^[A-Za-z][A-Za-z0-9+.-]*://.+")
    """Ship sealed segments to this URL of Beam's filesystems (s3://bucket/spool), where the stream's
    workers on other hosts read them (connectors/spool_ship.py); None: the spool stays here."""
    max_body_bytes: Size = 16 * 2**20
    max_line_bytes: Size = 2**20
    max_lines: int = Field(default=100_000, gt=0)
    max_in_flight: int = Field(default=64, gt=0)
    max_in_flight_bytes: Size = 192 * 2**20
    read_timeout: Seconds = 10.0
    body_timeout: Seconds = 60.0
    drain_seconds: Duration = 5.0
    max_spool_bytes: Size = 2**30
    segment_bytes: Size = 64 * 2**20
    segment_seconds: Seconds = 5.0
    max_open_segments: int = Field(default=256, gt=0)
    idempotency_seconds: Seconds = 3600.0
    idempotency_keys: int = Field(default=100_000, gt=0)
    fsync: bool = True
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tokens: list[TokenSettings] = []

    def spool_writer(self) -> SpoolWriter:
        if self.spool is None:
            raise ValueError("the gateway needs a spool directory")
        return SpoolWriter(self.spool, self.segment_bytes, self.segment_seconds, self.max_spool_bytes, self.fsync,
                           self.max_open_segments, self.idempotency_seconds, self.idempotency_keys)

    def ssl_context(self) -> ssl.SSLContext | None:
        """TLS when tls_cert is set (tls_key: the key file, unless it is in the certificate file)."""
        if self.tls_cert is None:
            if self.tls_key is not None:
                raise ValueError("gateway.tls_key needs gateway.tls_cert")
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as err:
            raise ValueError(f"cannot load the TLS certificate {self.tls_cert}: {err}") from None
        return context


class _GatewaySection(BaseModel):
    """A job config as the gateway reads it: its `gateway:` section; the pipeline's sections are not its."""

    model_config = ConfigDict(extra="ignore")

    gateway: GatewaySettings = GatewaySettings()


def load_settings(config: str | Path | None, **overrides: Any) -> GatewaySettings:
    """The `gateway:` section of a job config (all defaults without one), with the command line's overrides
    (None: not given). Any mistake, a bad certificate included, is a ConfigError naming file and key."""
    where = str(config) if config is not None else "<command line>"
    data = read_yaml(config) if config is not None else {}
    if data is None:
        data = {}
    if not isinstance(data, dict) or not isinstance(data.get("gateway") or {}, dict):
        raise ConfigError(f"{where}: gateway: expected a mapping of gateway settings")
    section = {**(data.get("gateway") or {}), **{k: v for k, v in overrides.items() if v is not None}}
    try:
        settings = _GatewaySection.model_validate({"gateway": section}).gateway
    except ValidationError as err:
        raise invalid(where, err, _GatewaySection, secrets=("token",)) from None
    try:
        settings.ssl_context()  # a certificate that does not load is said before listening
    except ValueError as err:
        raise ConfigError(f"{where}: {err}") from None
    return settings
