"""Reading archives by byte ranges: every line exactly once, wherever the ranges and blocks are cut."""

from __future__ import annotations

import bz2
import gzip
import io
from pathlib import Path
from typing import Any

import pytest
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.archives import (
    FileError,
    FileRange,
    InputError,
    check_inputs,
    iter_line_blocks,
    plan_ranges,
    read_range,
)


def expected_lines(data: bytes) -> list[tuple[int, bytes]]:
    """The obvious reading: split on \\n, drop the empty piece after a final \\n."""
    out, pos = [], 0
    pieces = data.split(b"\n")
    if pieces and pieces[-1] == b"":
        pieces.pop()
    for piece in pieces:
        out.append((pos, piece))
        pos += len(piece) + 1
    return out


def read_all(data: bytes, chunk: int, block: int) -> list[tuple[int, bytes]]:
    out = []
    for rng in plan_ranges("f.log", len(data), chunk):
        for offsets, lines in iter_line_blocks(io.BytesIO(data), rng.start, rng.end, block):
            out.extend(zip(offsets, lines, strict=True))
    return out


line = st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"|"))


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(line, max_size=30),
    trailing_newline=st.booleans(),
    chunk=st.integers(1, 120),
    block=st.integers(1, 64),
)
def test_ranges_cover_every_line_once(lines: list[bytes], trailing_newline: bool, chunk: int, block: int) -> None:
    data = b"\n".join(lines) + (b"\n" if trailing_newline and lines else b"")
    assert read_all(data, chunk, block) == expected_lines(data)


@pytest.mark.parametrize(
    ("data", "lines"),
    [
        (b"", []),
        (b"\n", [(0, b"")]),
        (b"a\n\nb", [(0, b"a"), (2, b""), (3, b"b")]),
        (b"a\r\nb\r\n", [(0, b"a\r"), (3, b"b\r")]),  # \r is the parser's business
    ],
)
def test_edge_cases(data: bytes, lines: list[tuple[int, bytes]]) -> None:
    assert read_all(data, 2, 1) == lines == expected_lines(data)


def test_plan_ranges_cuts_plain_files_only() -> None:
    assert plan_ranges("a/pv.0.log", 10, 4) == [
        FileRange("a/pv.0.log", 0, 4), FileRange("a/pv.0.log", 4, 8), FileRange("a/pv.0.log", 8, 10)
    ]
    assert plan_ranges("a/pv_20140117230103_1.gz", 10**9, 4) == [FileRange("a/pv_20140117230103_1.gz", 0, None)]
    assert plan_ranges("a/pv_20140117230103_1.bz2", 10**9, 4) == [FileRange("a/pv_20140117230103_1.bz2", 0, None)]
    assert FileRange("x", 4, 8).shard != FileRange("x", 8, 10).shard != FileRange("y", 8, 10).shard


@pytest.mark.parametrize("suffix", ["", ".gz", ".bz2"])
def test_compressed_files_read_through_beam_filesystems(tmp_path: Path, suffix: str) -> None:
    data = b"".join(b"us,1389913256,{\"i\":%d}\n" % i for i in range(5000))
    path = tmp_path / f"pv_20140117230103_1{suffix}"
    packed = {"": lambda d: d, ".gz": gzip.compress, ".bz2": bz2.compress}[suffix](data)
    path.write_bytes(packed)
    got = []
    for rng in plan_ranges(str(path), len(packed), 1 << 20):
        with FileSystems.open(rng.path, compression_type=CompressionTypes.AUTO) as stream:
            for offsets, lines in iter_line_blocks(stream, rng.start, rng.end, 4096):
                got.extend(zip(offsets, lines, strict=True))
    assert got == expected_lines(data)


def test_check_inputs_fails_on_a_glob_that_matches_nothing(tmp_path: Path) -> None:
    (tmp_path / "pv.0.log").write_text("x\n")
    check_inputs([str(tmp_path / "*.log")])
    with pytest.raises(InputError, match=r"--input .*\*\.gz: no file matches this pattern"):
        check_inputs([str(tmp_path / "*.log"), str(tmp_path / "*.gz")])


long_line = st.one_of(line, st.integers(0, 200).map(lambda n: b"L" * n))


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(long_line, max_size=20), chunk=st.integers(1, 300), block=st.integers(1, 64),
       max_line=st.integers(0, 50))
def test_over_long_lines_come_cut_at_their_own_offset(lines: list[bytes], chunk: int, block: int,
                                                      max_line: int) -> None:
    data = b"\n".join(lines)
    got = []
    for rng in plan_ranges("f.log", len(data), chunk):
        for offsets, cut in iter_line_blocks(io.BytesIO(data), rng.start, rng.end, block, max_line):
            got.extend(zip(offsets, cut, strict=True))
    assert got == [(offset, text[:max_line + 1]) for offset, text in expected_lines(data)]


@pytest.mark.parametrize(("make", "reason", "at_least"), [
    (lambda d: gzip.compress(d)[:-30], "truncated", 19_000),
    (lambda d: bz2.compress(d)[:-30], "truncated", 0),  # one bzip2 block: nothing of it can be decoded
    (lambda d: gzip.compress(d) + b"junk after the stream", "not valid gzip data", 20_000),
    (lambda d: d, "not valid gzip data", 0),  # plain text named .gz
])
def test_a_damaged_compressed_file_is_an_error_after_the_lines_it_had(tmp_path: Path, make: Any,
                                                                      reason: str, at_least: int) -> None:
    data = b"".join(b"us,1389913256,{\"i\":%d}\n" % i for i in range(20_000))
    packed = make(data)
    suffix = ".bz2" if packed.startswith(b"BZh") else ".gz"
    path = tmp_path / f"pv_20140117230103_1{suffix}"
    path.write_bytes(packed)
    got: list[bytes] = []
    with pytest.raises(FileError, match=reason):
        for batch in read_range(FileRange(str(path), 0, None), 4096):
            got += batch.lines
    assert got == data.split(b"\n")[:len(got)]  # what came before the damage is good, and is kept
    assert len(got) >= at_least  # all that decodes, not only the blocks before the one that failed
