"""Category names from log file names, with the original's camel-case rules (dpipe `als/camelcase.go`).

`mongo_err.0.log` and `mongo_err_20131208230103_1` are both `mongoErr`. Unlike the original, a name of
another shape is a reported error (its lines become dead letters), not a panic, and compressed history
files (`.gz`, `.bz2`) are named like their uncompressed selves.
"""

from __future__ import annotations

import functools
import posixpath
import re

_LIVE = re.compile(r"(.+)\.(\d+)\.log")
_HISTORY = re.compile(r"(.+)_(\d+)_(.+)")
_CHUNK = re.compile(r"[0-9A-Za-z]+")
_COMPRESSED = (".gz", ".bz2")


class UnknownCategory(ValueError):
    """The file name has neither the live (`name.N.log`) nor the history (`name_TS_N`) shape."""


def camel_case(name: str) -> str:
    """`bi_first_payment` -> `biFirstPayment`; `ffs.client.Error` -> `ffsClientError`."""
    chunks = _CHUNK.findall(name)
    if not chunks:
        return ""
    return chunks[0] + "".join(c[:1].upper() + c[1:] for c in chunks[1:])


@functools.lru_cache(maxsize=4096)
def category_from_path(path: str) -> str:
    """The camel-case category of a log file, from its base name.

    Raises UnknownCategory for names of another shape, such as `a.log` or `README`.
    """
    base = posixpath.basename(path.rstrip("/"))
    for ext in _COMPRESSED:
        if base.endswith(ext):
            base = base[: -len(ext)]
            break
    pattern = _LIVE if base.endswith(".log") else _HISTORY
    match = pattern.fullmatch(base)
    name = camel_case(match.group(1)) if match else ""
    if not name:
        raise UnknownCategory(
            f"cannot tell the category from file name {base!r}: expected 'name.N.log' or 'name_TIMESTAMP_N'"
        )
    return name
