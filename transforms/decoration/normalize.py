"""`normalize`: `<key>_norm` with every configured pattern replaced by `?`, in order, and `<key>_fp`, a
stable fingerprint of it for grouping alarms and issues."""

from __future__ import annotations

import re
from collections.abc import Sequence

import pyarrow as pa
from pydantic import field_validator

from transforms.decoration.base import Op, OpError, OpSection, decorations
from transforms.event import MISSING, Event
from transforms.fields import Keys, compile_getter, flat_name, is_number
from transforms.keys import fingerprint

BUILTIN_PATTERNS = {
    "batch_token": r"pre: .*; current: .*",
    "uuid": r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b",
    "ip": r"\b\d{1,3}(?:\.\d{1,3}){3}\b",
    "hex": r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{6,}\b",
    "digit": r"\d+",
}


class NormalizeOp(Op):
    name = "normalize"

    def __init__(self, keys: Sequence[str], patterns: Sequence[str]) -> None:
        self.keys = [(k, compile_getter(k), flat_name(k)) for k in keys]
        self.patterns = [re.compile(p) for p in patterns]

    def normalize(self, text: str) -> str:
        for pattern in self.patterns:
            text = pattern.sub("?", text)
        return text

    def apply(self, event: Event, counts: dict[str, int]) -> None:
        for key, get, flat in self.keys:
            value = get(event.fields)
            if value is MISSING or value is None:
                continue
            if type(value) is not str:
                if not is_number(value):
                    raise OpError(f"normalize: {key} is not text", f"got {type(value).__name__}: {value!r:.80}")
                value = str(value)
            norm = self.normalize(value)
            decorations(event)[flat + "_norm"] = norm
            decorations(event)[flat + "_fp"] = fingerprint(norm)

    def columns(self) -> list[tuple[str, pa.DataType]]:
        return [c for *_, flat in self.keys for c in ((flat + "_norm", pa.string()), (flat + "_fp", pa.string()))]


class NormalizeConfig(OpSection):
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
        out: list[str] = []
        for item in self.patterns:
            out.extend([BUILTIN_PATTERNS[item]] if isinstance(item, str) else item.values())
        return out

    def build(self) -> Op:
        return NormalizeOp(self.keys, self.regexes())
