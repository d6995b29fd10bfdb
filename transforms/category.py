"""Category names from log file names, with the original's camel-case rules (dpipe `als/camelcase.go`).

`mongo_err.0.log` and `mongo_err_20131208230103_1` are both `mongoErr`. Unlike the original, a name of
another shape is a reported error (its lines become dead letters), not a panic, and compressed history
files (`.gz`, `.bz2`) are named like their uncompressed selves.
"""

from __future__ import annotations

import functools
import hashlib
import posixpath
import re

_LIVE = re.compile(r"(.+)\.(\d+)\.log")
_HISTORY = re.compile(r"(.+)_(\d+)_(.+)")
_CHUNK = re.compile(r"[0-9A-Za-z]+")
_COMPRESSED = (".gz", ".bz2")
_GLOB_CHUNK = re.compile(r"(?:\[[^\]]*\]|[0-9A-Za-z*?])+")
MAX_CATEGORY = 100
"""Longest category name kept as is: `category=NAME` partition folders and file names stay far below the
255-byte limit of a file name. Longer names are cut and suffixed with a hash (see `bounded`)."""


class UnknownCategory(ValueError):
    """The file name has neither the live (`name.N.log`) nor the history (`name_TS_N`) shape."""


def camel_case(name: str) -> str:
    """`bi_first_payment` -> `biFirstPayment`; `ffs.client.Error` -> `ffsClientError`; never longer than
    MAX_CATEGORY characters (`bounded`), so every category is a safe file name."""
    return bounded(_join_camel(_CHUNK.findall(name)))


def camel_case_glob(glob: str) -> str:
    """A category glob in the archive's names: `mongo_*` -> `mongo*`, `pay_[ab]x` -> `pay[ab]x`. A token's
    globs are matched against `camel_case` of the posted category, so two spellings of one archive
    category (`mongo_err`, `mongoErr`) are always granted or refused together."""
    return _join_camel(_GLOB_CHUNK.findall(glob))


def _join_camel(chunks: list[str]) -> str:
    if not chunks:
        return ""
    return chunks[0] + "".join(c[:1].upper() + c[1:] for c in chunks[1:])


def bounded(name: str) -> str:
    """`name` if it has at most MAX_CATEGORY characters, else its start, `_` and a 64-bit hash of the whole
    name: still distinct per name, never a camel-case result (those have no `_`)."""
    if len(name) <= MAX_CATEGORY:
        return name
    digest = hashlib.blake2b(name.encode("utf-8", "surrogateescape"), digest_size=8).hexdigest()
    return f"{name[:MAX_CATEGORY - 17]}_{digest}"


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
