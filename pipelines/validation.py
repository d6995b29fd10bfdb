"""Config validation shared by every dpipe entry point, light enough for the collector (no Beam import).

Units (`16MiB`, `5s`), the user errors (`UserError`: a ConfigError says `file: key.path: what was expected;
got ...`), reading a YAML file with its line and column on a syntax error, and turning pydantic's errors into
those lines. Every entry point prints a UserError as `dpipe: ...` and exits 2, without a traceback (`cli`).
"""

from __future__ import annotations

import functools
import itertools
import re
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, ParamSpec

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ValidationError

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SIZE = re.compile(r"(\d+)\s*(B|KB|MB|GB|KiB|MiB|GiB)?", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


P = ParamSpec("P")


class UserError(Exception):
    """A mistake of the user's (config, command line, input), phrased for them: one line per mistake, never
    a traceback. Everything else that escapes an entry point is a bug or an outage, and shows as one."""


class ConfigError(UserError):
    """A configuration mistake: file, key path, what was expected."""


class UsageError(UserError):
    """A command-line mistake."""


def cli(main: Callable[P, int]) -> Callable[P, int]:
    """An entry point's `main`: a UserError raised anywhere in it is `dpipe: ...` on stderr and exit 2."""

    @functools.wraps(main)
    def run(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            return main(*args, **kwargs)
        except UserError as err:
            print(f"dpipe: {err}", file=sys.stderr, flush=True)
            return 2

    return run


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


def _whole_seconds(value: float) -> float:
    if value < 1 or value != int(value):
        raise ValueError("expected a whole number of seconds, at least 1s")
    return value


WholeSeconds = Annotated[float, BeforeValidator(_duration), AfterValidator(_whole_seconds)]
"""A duration of whole seconds, at least 1s (a counter's interval, a statistics window)."""


def increasing(what: str) -> AfterValidator:
    """Bounds that must be strictly increasing (`what` names them in the error)."""
    def check(value: list[float]) -> list[float]:
        if any(b <= a for a, b in itertools.pairwise(value)):
            raise ValueError(f"{what} must be strictly increasing")
        return value

    return AfterValidator(check)


def existing_file(what: str) -> AfterValidator:
    """A path that must name a file (`what` names it in the error: `no CA file at ...`)."""
    def check(value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"no {what} at {value!r}")
        return value

    return AfterValidator(check)


def read_yaml(path: str | Path) -> Any:
    """The YAML data of a config file; a missing, unreadable or malformed file is a ConfigError."""
    where = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such config file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{where}: cannot read the config file: {err}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{where}{at}: invalid YAML: {problem}") from None


def explain(error: dict[str, Any], root: type[BaseModel], patterns: dict[str, str] | None = None,
            secrets: tuple[str, ...] = ()) -> str:
    """One pydantic error as `key.path: message; got value`; `patterns` phrase regex mismatches, values of
    keys named in `secrets` are never echoed."""
    loc = [str(p) for p in error["loc"]]
    path = ".".join(loc) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{path}: unknown key; expected one of: {', '.join(fields_at(error['loc'][:-1], root))}"
    if kind == "string_pattern_mismatch":
        message = (patterns or {}).get(error.get("ctx", {}).get("pattern", ""), error["msg"])
    else:
        message = error["msg"].removeprefix("Value error, ")
    if loc and loc[-1] in secrets:
        return f"{path}: {message}"
    shown = repr(error.get("input"))
    return f"{path}: {message}" + (f"; got {shown}" if len(shown) <= 60 else "")


def invalid(where: str, err: ValidationError, root: type[BaseModel], patterns: dict[str, str] | None = None,
            secrets: tuple[str, ...] = ()) -> ConfigError:
    """Every mistake pydantic found in the config `where`, one `where: key.path: ...` line each."""
    lines = [explain(e, root, patterns, secrets) for e in err.errors(include_url=False)]
    return ConfigError(f"{where}: " + f"\n{where}: ".join(lines))


def fields_at(loc: tuple[Any, ...], root: type[BaseModel]) -> list[str]:
    """The keys allowed where an unknown key was found (walking models, lists and optionals)."""
    annotation: Any = root
    for part in loc:
        annotation = _model_in(annotation)
        if isinstance(part, int) or annotation is None:
            continue
        field = annotation.model_fields.get(part) or next(
            (f for f in annotation.model_fields.values() if f.alias == part), None
        )
        if field is None:
            return []
        annotation = field.annotation
    model = _model_in(annotation)
    return [f.alias or name for name, f in model.model_fields.items()] if model else []


def _model_in(annotation: Any) -> Any:
    """The pydantic model inside `X`, `list[X]`, `X | None` or `Annotated[list[X], ...]`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None
