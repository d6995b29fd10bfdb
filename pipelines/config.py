"""Job configuration: one YAML file per job, validated before the pipeline starts.

Every section is optional; the embedded defaults run the demo. A bad file fails with the file, the key path
and what was expected, e.g. `job.yaml: parse.max_age: expected a duration such as 90s, 15m, 12h or 7d`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"(\d+)\s*(B|KB|MB|GB|KiB|MiB|GiB)?", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


class ConfigError(Exception):
    """A configuration mistake, phrased for the user: file, key path, what was expected."""


def _duration(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 90s, 15m, 12h or 7d, or a number of seconds")
    if isinstance(value, int | float) and value >= 0:
        return float(value)
    match = _DURATION.fullmatch(str(value).strip()) if isinstance(value, str) else None
    if not match:
        raise ValueError("expected a duration such as 90s, 15m, 12h or 7d, or a number of seconds")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2)]


def _size(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if not match or int(match.group(1)) == 0:
        raise ValueError("expected a positive size such as 64MiB, 512KB or a number of bytes")
    return int(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()]


Duration = Annotated[float, BeforeValidator(_duration)]
Size = Annotated[int, BeforeValidator(_size)]


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


class JobConfig(_Section):
    name: str = Field(default="dpipe", min_length=1)
    parse: ParseConfig = ParseConfig()
    read: ReadConfig = ReadConfig()
    archive: ArchiveConfig = ArchiveConfig()


def load_config(path: str | Path | None) -> JobConfig:
    """The job config from `path`, or the embedded defaults when `path` is None."""
    if path is None:
        return JobConfig()
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such config file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{where}: cannot read the config file: {err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{where}{at}: invalid YAML: {problem}") from None
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


def _explain(error: dict[str, Any]) -> str:
    loc = [str(p) for p in error["loc"]]
    path = ".".join(loc) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        allowed = _fields_at(loc[:-1])
        return f"{path}: unknown key; expected one of: {', '.join(allowed)}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{path}: {message}; got {error.get('input')!r}"


def _fields_at(loc: list[str]) -> list[str]:
    model: Any = JobConfig
    for part in loc:
        field = model.model_fields.get(part)
        if field is None or not isinstance(field.annotation, type) or not issubclass(field.annotation, BaseModel):
            return []
        model = field.annotation
    return list(model.model_fields)
