"""`del`: deep delete of dotted paths; it copies the path it walks, so a nested object shared with another
branch is never changed."""

from __future__ import annotations

from collections.abc import Sequence

from transforms.decoration.base import Op, OpSection
from transforms.event import Event, delete_path
from transforms.fields import Keys, compile_path


class DelOp(Op):
    name = "del"

    def __init__(self, keys: Sequence[str]) -> None:
        self.keys = [compile_path(k) for k in keys]

    def apply(self, event: Event, counts: dict[str, int]) -> None:
        for path in self.keys:
            if delete_path(event.fields, path):
                event.payload = None  # the archive re-serialises the changed fields


class DelConfig(OpSection):
    keys: Keys

    def build(self) -> Op:
        return DelOp(self.keys)
