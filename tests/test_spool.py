"""The spool: its file format, the read helpers the stream source uses, the group-committing writer, recovery."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from connectors.gateway import spool
from connectors.gateway.spool import (
    Segment,
    SinkError,
    SinkFull,
    SpoolWriter,
    WriteFailed,
    list_segments,
    read_lines,
    spool_bytes,
    spool_lines,
)


def segments_dir(root: Path) -> Path:
    path = root / "segments"
    path.mkdir(parents=True, exist_ok=True)
    return path


def batch(tag: str, n: int) -> list[bytes]:
    return [b"us,1389000000,{\"id\":\"%s-%d\"}" % (tag.encode(), i) for i in range(n)]


def test_list_segments_sorted_by_seq_with_state_and_ignores_other_files(tmp_path: Path) -> None:
    d = segments_dir(tmp_path)
    for name in ("0000000000000010.pv.open", "0000000000000002.mongo_err.seg", "0000000000000003.pv.seg",
                 "next_seq", "junk.txt", "12.pv.seg"):
        (d / name).write_bytes(b"x\n")
    assert list_segments(tmp_path) == [
        Segment(2, "mongo_err", d / "0000000000000002.mongo_err.seg", True),
        Segment(3, "pv", d / "0000000000000003.pv.seg", True),
        Segment(10, "pv", d / "0000000000000010.pv.open", False),
    ]
    assert list_segments(tmp_path)[2].name == "0000000000000010.pv"
    assert list_segments(tmp_path / "missing") == []
    assert spool_bytes(tmp_path) == 6


def test_read_lines_returns_only_complete_lines_with_offsets(tmp_path: Path) -> None:
    path = tmp_path / "s"
    path.write_bytes(b"a,1,{}\nbb,2,{}\nccc,3,{\"x\"")  # the last line is still being written
    assert read_lines(path, 0, 1000) == ([(0, b"a,1,{}"), (7, b"bb,2,{}")], 15)
    assert read_lines(path, 7, 1000) == ([(7, b"bb,2,{}")], 15)
    assert read_lines(path, 15, 1000) == ([], 15)
    assert read_lines(path, 0, 10) == ([(0, b"a,1,{}")], 7)  # max_bytes cuts at a line boundary
    assert read_lines(path, 0, 3) == ([(0, b"a,1,{}")], 7)  # a line longer than max_bytes still comes whole
    with path.open("ab") as f:
        f.write(b":1}\n")
    assert read_lines(path, 15, 1000) == ([(15, b'ccc,3,{"x":1}')], 29)


def test_append_writes_lines_byte_exact_in_order(tmp_path: Path) -> None:
    async def main() -> dict[str, float]:
        writer = SpoolWriter(tmp_path)
        await writer.append("pv", [b"us,1,{}", b"fr,2,{\"a\":\"\xc3\xa9\"}"])
        await writer.append("mongoErr", [b"de,3,{}"])
        await writer.append("pv", [b"th,4,{}"])
        stats = writer.stats()
        await writer.close()
        return stats

    stats = asyncio.run(main())
    assert spool_lines(tmp_path) == [
        ("0000000000000000.pv", 0, b"us,1,{}"),
        ("0000000000000000.pv", 8, b'fr,2,{"a":"\xc3\xa9"}'),
        ("0000000000000000.pv", 24, b"th,4,{}"),
        ("0000000000000001.mongoErr", 0, b"de,3,{}"),
    ]
    assert all(s.sealed for s in list_segments(tmp_path))  # close seals
    assert stats["fsync_seconds_count"] == 3 and stats["spool_bytes"] == 40


def test_append_returns_only_after_its_lines_are_written_and_fsynced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []  # file sizes at each fdatasync
    real = os.fdatasync

    def recording(fd: int) -> None:
        real(fd)
        synced.append(os.fstat(fd).st_size)

    monkeypatch.setattr(os, "fdatasync", recording)

    async def main() -> None:
        writer = SpoolWriter(tmp_path)
        await writer.append("pv", [b"a,1,{}", b"b,2,{}"])
        assert synced == [14]
        await writer.append("pv", [b"c,3,{}"])
        assert synced == [14, 21]
        await writer.close()

    asyncio.run(main())


def test_concurrent_appends_share_fsyncs_and_stay_contiguous(tmp_path: Path) -> None:
    async def main() -> dict[str, float]:
        writer = SpoolWriter(tmp_path)
        await asyncio.gather(*(writer.append("pv", batch(f"r{r}", 50)) for r in range(40)))
        stats = writer.stats()
        await writer.close()
        return stats

    stats = asyncio.run(main())
    assert stats["fsync_seconds_count"] < 40 / 2  # group commit: many requests per fsync
    ids = [line.rsplit(b'"', 2)[1].decode() for _, _, line in spool_lines(tmp_path)]
    assert sorted(ids) == sorted(f"r{r}-{i}" for r in range(40) for i in range(50))
    for start in range(0, len(ids), 50):  # each request's 50 lines are together and in order
        request = ids[start].split("-")[0]
        assert ids[start:start + 50] == [f"{request}-{i}" for i in range(50)]


def test_segments_roll_by_size_without_splitting_a_request(tmp_path: Path) -> None:
    async def main() -> None:
        writer = SpoolWriter(tmp_path, segment_bytes=1000)
        for r in range(10):
            await writer.append("pv", batch(f"r{r}", 10))  # about 290 bytes each
            assert sum(not s.sealed for s in list_segments(tmp_path)) == 1
        await writer.append("pv", batch("big", 60))  # larger than a segment: alone in one
        await writer.close()

    asyncio.run(main())
    segments = list_segments(tmp_path)
    assert len(segments) >= 4 and all(s.sealed for s in segments)
    sizes = [s.path.stat().st_size for s in segments]
    assert all(size <= 1000 for size in sizes[:-1]) and sizes[-1] > 1000
    per_segment: dict[str, set[str]] = {}
    for name, _, line in spool_lines(tmp_path):
        per_segment.setdefault(name, set()).add(line.rsplit(b'"', 2)[1].split(b"-")[0].decode())
    requests = [r for names in per_segment.values() for r in names]
    assert len(requests) == len(set(requests)) == 11  # no request spans two segments


def test_segments_seal_after_segment_seconds(tmp_path: Path) -> None:
    async def main() -> None:
        writer = SpoolWriter(tmp_path, segment_seconds=0.2)
        await writer.append("pv", batch("a", 3))
        assert [s.sealed for s in list_segments(tmp_path)] == [False]
        await asyncio.sleep(0.5)
        assert [s.sealed for s in list_segments(tmp_path)] == [True]  # sealed with no further append
        await writer.append("pv", batch("b", 3))
        assert [(s.seq, s.sealed) for s in list_segments(tmp_path)] == [(0, True), (1, False)]
        await writer.close()

    asyncio.run(main())


def test_recovery_truncates_the_partial_tail_and_seals(tmp_path: Path) -> None:
    d = segments_dir(tmp_path)
    (d / "0000000000000004.pv.open").write_bytes(b"a,1,{}\nb,2,{}\nc,3,{\"trunc")
    (d / "0000000000000005.click.open").write_bytes(b"no newline at all")
    (d / "0000000000000002.pv.seg").write_bytes(b"old,1,{}\n")

    async def main() -> None:
        writer = SpoolWriter(tmp_path)
        assert [(s.name, s.sealed) for s in list_segments(tmp_path)] == [
            ("0000000000000002.pv", True), ("0000000000000004.pv", True), ("0000000000000005.click", True)]
        assert (d / "0000000000000004.pv.seg").read_bytes() == b"a,1,{}\nb,2,{}\n"
        assert (d / "0000000000000005.click.seg").read_bytes() == b""
        await writer.append("pv", [b"d,4,{}"])  # continues after the highest seq
        await writer.close()

    asyncio.run(main())
    assert (d / "0000000000000006.pv.seg").read_bytes() == b"d,4,{}\n"


def test_seq_never_reused_after_the_reader_deleted_everything(tmp_path: Path) -> None:
    async def write_one() -> None:
        writer = SpoolWriter(tmp_path)
        await writer.append("pv", [b"a,1,{}"])
        await writer.close()

    asyncio.run(write_one())
    asyncio.run(write_one())
    assert [s.seq for s in list_segments(tmp_path)] == [0, 1]
    for segment in list_segments(tmp_path):  # the reader is done with them
        segment.path.unlink()
    asyncio.run(write_one())
    assert [s.seq for s in list_segments(tmp_path)] == [2]


def test_full_when_the_spool_reaches_its_limit_and_not_after_the_reader_deletes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool, "SIZE_REFRESH_SECONDS", 0.05)

    async def main() -> None:
        writer = SpoolWriter(tmp_path, max_spool_bytes=466, segment_seconds=0.1)
        assert not writer.full()
        await writer.append("pv", batch("a", 17))  # 466 bytes: exactly the bound
        assert writer.full()
        with pytest.raises(SinkFull):  # the bound holds on what is written, whatever full() said before
            await writer.append("pv", batch("x", 1))
        await asyncio.sleep(0.3)  # sealed by time
        for segment in list_segments(tmp_path):
            segment.path.unlink()
        await asyncio.sleep(0.3)  # the writer notices on its own
        assert not writer.full() and writer.stats()["spool_bytes"] == 0
        await writer.append("pv", batch("b", 1))  # and carries on with a new segment
        await writer.close()

    asyncio.run(main())
    assert [line for _, _, line in spool_lines(tmp_path)] == batch("b", 1)


def test_concurrent_requests_cannot_pass_the_bound_together(tmp_path: Path) -> None:
    async def main() -> list[object]:
        writer = SpoolWriter(tmp_path, max_spool_bytes=1000)
        answers = await asyncio.gather(*(writer.append("pv", batch(f"r{i}", 10)) for i in range(16)),
                                       return_exceptions=True)
        await writer.close()
        return answers

    answers = asyncio.run(main())
    accepted = [i for i, a in enumerate(answers) if a is True]
    assert accepted and all(isinstance(a, SinkFull) for a in answers if a is not True)
    assert spool_bytes(tmp_path) <= 1000
    assert [line for *_, line in spool_lines(tmp_path)] == [line for i in accepted for line in batch(f"r{i}", 10)]


def test_a_failed_fsync_refuses_that_commit_cuts_it_off_and_the_writer_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.fdatasync
    failing = {"on": False}

    def flaky(fd: int) -> None:
        if failing["on"]:
            raise OSError(28, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", flaky)

    async def main() -> None:
        writer = SpoolWriter(tmp_path)
        await writer.append("pv", [b"a,1,{}"])
        failing["on"] = True
        with pytest.raises(WriteFailed, match="No space left on device") as refused:
            await writer.append("pv", [b"b,2,{}"])
        assert refused.value.storage and writer.healthy()
        with pytest.raises(WriteFailed):
            await writer.append("mongo", [b"c,3,{}"])  # a new segment fails too, and leaves no file
        failing["on"] = False  # space is back
        await writer.append("pv", [b"d,4,{}"])
        assert writer.stats()["write_errors_total"] == 2
        await writer.close()

    asyncio.run(main())
    assert spool_lines(tmp_path) == [("0000000000000000.pv", 0, b"a,1,{}"), ("0000000000000002.pv", 0, b"d,4,{}")]


def test_open_segment_files_are_a_bounded_pool(tmp_path: Path) -> None:
    async def main() -> list[float]:
        writer = SpoolWriter(tmp_path, max_open_segments=4)
        opened = []
        for round_ in range(2):
            for n in range(10):
                await writer.append(f"c{n}", [b"a,%d,{}" % round_])
                opened.append(writer.stats()["open_segments"])
        await writer.close()
        return opened

    assert max(asyncio.run(main())) == 4
    lines = spool_lines(tmp_path)
    assert sorted(line for *_, line in lines) == [b"a,0,{}"] * 10 + [b"a,1,{}"] * 10


def test_idempotency_keys_survive_a_restart_and_a_torn_request_is_cut_back(tmp_path: Path) -> None:
    async def first() -> list[bool]:
        writer = SpoolWriter(tmp_path)
        answers = [await writer.append("pv", batch("k1", 3), key="k1"),
                   await writer.append("pv", batch("k1", 3), key="k1"),  # a retry: acknowledged, not written
                   await writer.append("mongo", batch("k1", 3), key="k1")]  # keys are per category
        os.close(writer._lock)  # as if killed: no close(), no sealing
        return answers

    assert asyncio.run(first()) == [True, False, True]
    # a kill -9 in the middle of the next keyed request: its journal line and two of its three lines made it
    segments = tmp_path / "segments"
    open_pv = next(segments.glob("*.pv.open"))
    start = open_pv.stat().st_size
    with (segments / "keys").open("ab") as f:
        f.write(b'{"c":"pv","k":"k2","s":0,"o":%d,"e":%d,"n":3,"t":%f}\n' % (start, start + 84, time.time()))
    with open_pv.open("ab") as f:
        f.write(b"\n".join(batch("k2", 2)) + b"\n")

    async def second() -> list[bool]:
        writer = SpoolWriter(tmp_path)
        answers = [await writer.append("pv", batch("k1", 3), key="k1"),
                   await writer.append("pv", batch("k2", 3), key="k2")]  # not acknowledged before: written
        await writer.close()
        return answers

    assert asyncio.run(second()) == [False, True]
    assert sorted(line for *_, line in spool_lines(tmp_path)) == sorted(batch("k1", 3) * 2 + batch("k2", 3))


def test_empty_append_and_bad_category(tmp_path: Path) -> None:
    async def main() -> None:
        writer = SpoolWriter(tmp_path)
        await writer.append("pv", [])
        with pytest.raises(ValueError, match="bad category"):
            await writer.append("../etc", [b"x"])
        await writer.close()

    asyncio.run(main())
    assert list_segments(tmp_path) == []


def test_one_writer_per_spool(tmp_path: Path) -> None:
    async def main() -> None:
        writer = SpoolWriter(tmp_path)
        with pytest.raises(SinkError, match="in use by another spool writer"):
            SpoolWriter(tmp_path)
        await writer.close()
        await SpoolWriter(tmp_path).close()  # free again once closed

    asyncio.run(main())
