"""Field paths and readers: how every stage names and reads a value of an event (docs/architecture.md,
"The ground floor").

One precedence rule for every reader: `area` and `category` are the event's own; then a decoration
(`_usd`, `message_fp`); then the payload at the dotted path. Dotted names become flat column names with `_`
for `.` (`_log_info.level` -> `_log_info_level`), for decorations, archive and behaviour columns alike.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Annotated, Any

from pydantic import Field

from transforms.event import MISSING, Event, get_path

Path = tuple[str, ...]
DottedKey = Annotated[str, Field(pattern=r"^[^.\s]+(\.[^.\s]+)*$")]
"""A dotted key in a config (`_log_info.ip`)."""
Keys = Annotated[list[DottedKey], Field(min_length=1)]
Getter = Callable[[dict[str, Any]], Any]
Reader = Callable[[Event], Any]


def compile_path(dotted: str) -> Path:
    return tuple(dotted.split("."))


def compile_getter(dotted: str) -> Getter:
    """A reader of one dotted key of a payload: the same as `get_path`, unrolled for the common one and two
    parts (this is the hottest call of decoration)."""
    path = compile_path(dotted)
    if len(path) == 1:
        (key,) = path
        return lambda fields: fields.get(key, MISSING)
    if len(path) == 2:
        outer, inner = path

        def get2(fields: dict[str, Any]) -> Any:
            node = fields.get(outer)
            return node.get(inner, MISSING) if type(node) is dict else MISSING

        return get2
    return lambda fields: get_path(fields, path)


def flat_name(dotted: str) -> str:
    """A dotted key as a top-level or column name: `_log_info.level` -> `_log_info_level`."""
    return dotted.replace(".", "_")


def reader(dotted: str) -> Reader:
    """Read a key from an event by the one precedence rule: `area` and `category`, a decoration, the
    payload path (MISSING when absent)."""
    if dotted in ("area", "category"):
        return lambda event: getattr(event, dotted)
    get = compile_getter(dotted)

    def read(event: Event) -> Any:
        if event.decor and dotted in event.decor:
            return event.decor[dotted]
        return get(event.fields)

    return read


def key_reader(by: str | None) -> Callable[[Event], str | None]:
    """The grouping key of an event as text (None without `by`, or when the event lacks it)."""
    if by is None:
        return lambda event: None
    get = reader(by)

    def key(event: Event) -> str | None:
        k = get(event)
        return None if k is MISSING or k is None else str(k)

    return key


def text_of(value: Any) -> str | None:
    """A scalar as text for counting distinct or frequent values (1 and "1" are one value); else None."""
    if value is MISSING or value is None or isinstance(value, dict | list):
        return None
    return value if type(value) is str else str(value)


def is_number(value: Any) -> bool:
    """A JSON number (bool is not one)."""
    return type(value) in (int, float)


def number_text(x: float) -> str:
    """A bound as a label: whole numbers without `.0` (`10`, `2.5`)."""
    return str(int(x)) if float(x).is_integer() else str(x)


def range_labels(bounds: Sequence[float]) -> list[str]:
    """`lo-hi` labels of the half-open buckets between consecutive bounds."""
    return [f"{number_text(lo)}-{number_text(hi)}" for lo, hi in itertools.pairwise(bounds)]
