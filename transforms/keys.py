"""Keys and ids: stable fingerprints, document ids of lines, and `_id`s of results (docs/architecture.md,
"The ground floor"). Every id is the same on every worker, run and release (unlike `hash()`), so re-runs
replace what they wrote and a stream's corrections converge.
"""

from __future__ import annotations

import base64
import hashlib
import posixpath
from collections.abc import Sequence
from typing import Any


def fingerprint(text: str) -> str:
    """A stable 16-hex-digit fingerprint (the same on every worker and run, unlike hash())."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=8).hexdigest()


def result_id(*parts: Any) -> str:
    """A result's `_id`: the fingerprint of its branch, name, key and window (each part as `str` gives it)."""
    return fingerprint("\0".join(map(str, parts)))


def source_key(source: str) -> bytes:
    """The part of a line's source that its id hashes: the file name, not the folder or filesystem, so the
    same archive read from local disk, S3 or HDFS (or moved between them) gives the same ids."""
    return posixpath.basename(source.rstrip("/")).encode("utf-8", "surrogateescape")


def doc_id(source: str | bytes, offset: int, raw: bytes) -> str:
    """Deterministic id of a line: the same line from the same file and offset always gets the same id
    (replays and retries overwrite instead of duplicating); 128 bits, URL-safe base64. `source` is a path
    (its `source_key` is hashed) or an already computed key."""
    key = source_key(source) if isinstance(source, str) else source
    digest = hashlib.blake2b(b"%s\0%d\0%s" % (key, offset, raw), digest_size=16).digest()
    return base64.urlsafe_b64encode(digest)[:22].decode("ascii")


def doc_ids(source: str | bytes, offsets: Sequence[int], raws: Sequence[bytes]) -> list[str]:
    """`doc_id` of many lines of one source at once (the same ids: tests compare the two): one base64
    encoding for the batch instead of one per line. A 16-byte digest padded to 18 bytes encodes to 24
    characters whose first 22 are the digest's own."""
    if not raws:
        return []
    key = source_key(source) if isinstance(source, str) else source
    # the hash of `key\0` is computed once and copied per line: a quarter less than hashing the whole again
    copy = hashlib.blake2b(key + b"\0", digest_size=16).copy
    digests = []
    for offset, raw in zip(offsets, raws, strict=True):
        h = copy()
        h.update(b"%d\0" % offset)
        h.update(raw)
        digests.append(h.digest())
    text = base64.urlsafe_b64encode(b"\0\0".join(digests) + b"\0\0").decode("ascii")
    return [text[i:i + 22] for i in range(0, len(text), 24)]
