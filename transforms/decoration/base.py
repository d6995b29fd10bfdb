"""What every decoration op is (docs/architecture.md, "The component contract"): an `Op` changes an event in
place or raises `OpError`; its config is an `OpSection` whose `build` makes it; `setup` runs once per worker
(open a database, set a gauge), so the decoration DoFn names no op."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from pydantic import BaseModel, ConfigDict

from transforms.event import Event


class OpError(Exception):
    """An op cannot apply to an event: `reason` (e.g. "range: level is not a number") is the dead letter's
    error, `detail` says what was found."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.detail = reason, detail


class Op:
    """One decoration. `apply` changes the event in place (the decoration stage owns it), or raises OpError."""

    name = "op"

    def apply(self, event: Event, counts: dict[str, int]) -> None:
        raise NotImplementedError

    def setup(self) -> None:
        """Once per worker, before the first event (the DoFn's `setup`)."""

    def columns(self) -> list[tuple[str, pa.DataType]]:
        """The decorations it may set, with their archive column types."""
        return []


class OpSection(BaseModel):
    """An op's config: frozen, unknown keys refused; `build` makes the op."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    def build(self) -> Op:
        raise NotImplementedError


def decorations(event: Event) -> dict[str, Any]:
    """The event's decorations, made on first use (most events of a route get none)."""
    if event.decor is None:
        event.decor = {}
    return event.decor
