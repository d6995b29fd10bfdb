"""ReadFromSpool: the reader unit-tested directly (order, tailing, the .open -> .seg rename, checkpoints, event time,
finalize), then the whole source on Prism: lines appended while the pipeline runs arrive exactly once, event-time
windows fire before the stream ends, and finalize deleted what was read but not the open segment."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from itertools import accumulate
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState
from apache_beam.transforms import window
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Timestamp

from connectors import spool_source
from connectors.archives import STATS
from connectors.gateway.spool import SpoolWriter, list_segments, read_lines, segment_dir, spool_bytes, spool_lines
from connectors.spool_source import ReadFromSpool, SpoolMark, SpoolReader, SpoolSource, event_ms
from tests.servers.prism import PrismServer
from transforms.event import LineBatch

NOW_S = int(time.time())


def als(ts_s: float, i: int, area: str = "us") -> bytes:
    return b'%s,%d,{"i":%d}' % (area.encode(), int(ts_s * 1000), i)


def write_segment(root: Path, seq: int, category: str, lines: list[bytes], sealed: bool = True) -> Path:
    """A segment file in the spool's documented format (what the gateway's SpoolWriter writes)."""
    folder = segment_dir(root)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{seq:016d}.{category}{'.seg' if sealed else '.open'}"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    return path


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as f:
        f.write(data)


def reader(root: Path, mark: SpoolMark | None = None, **kw: Any) -> SpoolReader:
    return SpoolSource(str(root), **kw).create_reader(None, mark)


def drain(r: SpoolReader, started: bool = True, limit: int | None = None) -> list[LineBatch]:
    """Batches until the reader has nothing (or `limit` batches)."""
    out: list[LineBatch] = []
    while limit is None or len(out) < limit:
        if not (r.advance() if started else r.start()):
            break
        started = True
        out.append(r.get_current())
    return out


def flat(batches: list[LineBatch]) -> list[tuple[str, int, bytes]]:
    return [(b.source, o, line) for b in batches for o, line in zip(b.offsets, b.lines, strict=True)]


def roundtrip(source: SpoolSource, mark: SpoolMark) -> SpoolMark:
    coder = source.get_checkpoint_mark_coder()
    return coder.decode(coder.encode(mark))


# ---- the reader ----


def test_event_ms_reads_the_second_field_cheaply() -> None:
    assert event_ms(b"us,1389000000,{}") == 1389000000000
    assert event_ms(b"us,1389000000123,{}") == 1389000000123
    assert event_ms(b"us,notatime,{}") is None
    assert event_ms(b"us,1389000000") is None  # not 3 fields: a dead letter downstream
    assert event_ms(b"garbage") is None


def by_input(batches: list[LineBatch]) -> dict[str, list[tuple[str, int, bytes]]]:
    out: dict[str, list[tuple[str, int, bytes]]] = {}
    for entry in flat(batches):
        out.setdefault(entry[0].split(".", 1)[1], []).append(entry)
    return out


def test_reads_every_line_once_each_input_in_seq_order_as_named_batches(tmp_path: Path) -> None:
    write_segment(tmp_path, 3, "pv", [als(NOW_S, i) for i in range(7)])
    write_segment(tmp_path, 4, "mongoErr", [als(NOW_S, i, "fr") for i in range(2)])
    write_segment(tmp_path, 5, "pv", [als(NOW_S, i) for i in range(4)], sealed=False)
    batches = drain(reader(tmp_path, batch_lines=3), started=False)
    assert sorted(flat(batches)) == sorted(spool_lines(tmp_path))
    assert by_input(batches) == by_input([b for b in batches if b.category == "pv"] +
                                         [b for b in batches if b.category == "mongoErr"])
    assert by_input(batches)["pv"] == [e for e in spool_lines(tmp_path) if e[0].endswith(".pv")]
    n = len(als(NOW_S, 0)) + 1  # bytes per line
    assert [(b.source, b.seq, b.category, len(b.lines)) for b in batches if b.category == "pv"] == [
        ("0000000000000003.pv", 0, "pv", 3), ("0000000000000003.pv", 3 * n, "pv", 3),
        ("0000000000000003.pv", 6 * n, "pv", 1),
        ("0000000000000005.pv", 0, "pv", 3), ("0000000000000005.pv", 3 * n, "pv", 1),
    ]
    assert all(b.shard == b.source and b.seq == b.offsets[0] and b.category_error is None for b in batches)


def test_tails_appends_and_follows_the_rename_to_sealed(tmp_path: Path) -> None:
    path = write_segment(tmp_path, 0, "pv", [als(NOW_S, 0)], sealed=False)
    r = reader(tmp_path)
    got = drain(r, started=False)
    append(path, als(NOW_S, 1) + b"\n" + b"us,%d,{\"i\":2" % (NOW_S * 1000))  # the last line is still partial
    got += drain(r)
    assert [line for _, _, line in flat(got)] == [als(NOW_S, 0), als(NOW_S, 1)]
    append(path, b"}\n")
    path.rename(path.with_suffix(".seg"))  # sealed while the reader holds the .open path
    write_segment(tmp_path, 1, "pv", [als(NOW_S, 3)], sealed=False)
    got += drain(r)
    assert flat(got) == spool_lines(tmp_path)
    assert [b.source for b in got][-1] == "0000000000000001.pv"


def test_an_open_segment_of_one_input_holds_back_no_other(tmp_path: Path) -> None:
    write_segment(tmp_path, 0, "pv", [als(NOW_S, 0)], sealed=False)
    write_segment(tmp_path, 1, "mongoErr", [als(NOW_S, 1)])
    r = reader(tmp_path, poll_interval_s=0.01)
    assert sorted(b.source for b in drain(r, started=False)) == ["0000000000000000.pv", "0000000000000001.mongoErr"]


def test_the_slowest_active_input_holds_the_watermark_until_it_is_idle(tmp_path: Path) -> None:
    write_segment(tmp_path, 0, "pv", [als(NOW_S - 1, 0)], sealed=False)
    write_segment(tmp_path, 1, "mongoErr", [als(NOW_S - 600, 1)], sealed=False)  # a collector 10 min behind
    r = reader(tmp_path, max_out_of_order_s=5, idle_timeout_s=0.3, poll_interval_s=0.01)
    drain(r, started=False)
    assert r.get_watermark() == Timestamp(NOW_S - 605)
    pv = segment_dir(tmp_path) / "0000000000000000.pv.open"
    deadline = time.monotonic() + 30
    while r.get_watermark() == Timestamp(NOW_S - 605):  # pv keeps delivering, mongoErr goes quiet
        assert time.monotonic() < deadline, "the idle input still holds the watermark"
        append(pv, als(NOW_S, 2) + b"\n")
        drain(r)
    assert r.get_watermark() == Timestamp(NOW_S - 5)
    append(segment_dir(tmp_path) / "0000000000000001.mongoErr.open", als(NOW_S - 590, 3) + b"\n")
    late = drain(r)
    assert [b.category for b in late] == ["mongoErr"] and late[0].watermark_ms == (NOW_S - 5) * 1000


def test_a_reader_rebuilt_from_its_mark_at_every_checkpoint_keeps_its_clocks(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Beam rebuilds a reader from its mark whenever its reader cache misses (on Prism every few seconds):
    the idle timeout, the replay watermark and a crashed run's floor must still be reached."""
    clock = [1000.0]
    monkeypatch.setattr(spool_source, "_now", lambda: clock[0])
    monkeypatch.setattr(spool_source, "_persisted", {})
    pv = write_segment(tmp_path, 0, "pv", [als(NOW_S - 1, 0)], sealed=False)
    write_segment(tmp_path, 1, "mongoErr", [als(NOW_S - 600, 1)], sealed=False)
    kw: dict[str, Any] = {"max_out_of_order_s": 5, "idle_timeout_s": 30, "replay_span_s": 60,
                          "publish_margin_s": 20}
    r = reader(tmp_path, **kw)
    drain(r, started=False)
    for n in range(2, 20):  # a bundle per 5 s; pv keeps delivering, mongoErr went quiet
        clock[0] += 5
        r = reader(tmp_path, roundtrip(r._source, r.get_checkpoint_mark()), **kw)
        append(pv, als(NOW_S, n) + b"\n")
        drain(r)
    assert r.get_watermark() == Timestamp(NOW_S - 5)  # mongoErr stopped holding it after 30 s
    mark = r.get_checkpoint_mark()
    assert mark.replay_watermark_ms == (NOW_S - 5) * 1000  # as it stood 20 s ago
    mark.finalize_checkpoint()
    # kill -9, then the restarted run's reader is rebuilt too: the replay watermark stays its floor
    again = reader(tmp_path, **kw)
    assert again.get_watermark() == Timestamp(NOW_S - 5)
    rebuilt = reader(tmp_path, roundtrip(again._source, again.get_checkpoint_mark()), **kw)
    replayed = drain(rebuilt, started=False)
    assert len(replayed) > 2 and {b.watermark_ms for b in replayed} == {(NOW_S - 5) * 1000}


def test_a_backlog_is_read_furthest_behind_first(tmp_path: Path) -> None:
    for seq in range(6):  # pv's segments are written first, errors' later, each covering the same hour
        category = "pv" if seq < 3 else "error"
        write_segment(tmp_path, seq, category, [als(NOW_S - 3600 + 1200 * (seq % 3) + i, i) for i in range(3)])
    r = reader(tmp_path, max_out_of_order_s=0, batch_lines=3, idle_timeout_s=60)
    batches = drain(r, started=False)
    assert [b.category for b in batches] == ["pv", "error", "pv", "error", "pv", "error"]
    behind = [b.watermark_ms for b in batches]
    assert behind == sorted(behind, key=lambda w: -1 if w is None else w)  # never goes back


def test_a_missing_seq_is_skipped_only_after_the_grace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(spool_source, "GAP_GRACE_S", 0.2)
    write_segment(tmp_path, 0, "pv", [als(NOW_S, 0)])
    write_segment(tmp_path, 2, "pv", [als(NOW_S, 2)])  # seq 1: a crash between taking it and creating it
    r = reader(tmp_path)
    assert [b.source for b in drain(r, started=False)] == ["0000000000000000.pv"]
    assert r.get_checkpoint_mark().positions == {"pv": (1, 0)}
    write_segment(tmp_path, 1, "pv", [als(NOW_S, 1)])  # a listing had missed it: it must still be read
    assert [b.source for b in drain(r)] == ["0000000000000001.pv", "0000000000000002.pv"]
    write_segment(tmp_path, 5, "pv", [als(NOW_S, 5)])
    assert drain(r) == []
    time.sleep(0.25)
    assert [b.source for b in drain(r)] == ["0000000000000005.pv"]


def test_a_reader_from_a_checkpoint_resumes_exactly(tmp_path: Path) -> None:
    write_segment(tmp_path, 0, "pv", [als(NOW_S + i, i) for i in range(10)])
    write_segment(tmp_path, 1, "mongoErr", [als(NOW_S + i, i) for i in range(10, 13)])
    open_path = write_segment(tmp_path, 2, "pv", [als(NOW_S + i, i) for i in range(13, 18)], sealed=False)
    source = SpoolSource(str(tmp_path), batch_lines=4)
    expected = sorted(spool_lines(tmp_path))
    total = len(drain(source.create_reader(None, None), started=False))
    for cut in range(total + 1):  # every cut point: mid-buffer, at segment ends, at the very end
        first = source.create_reader(None, None)
        before = drain(first, started=False, limit=cut)
        mark = roundtrip(source, first.get_checkpoint_mark())
        second = source.create_reader(None, mark)
        after = drain(second, started=False)
        assert sorted(flat(before) + flat(after)) == expected, cut
        assert second.get_watermark() >= first.get_watermark()
    # a mark taken at the end of the open segment resumes with what is appended and sealed later
    end = source.create_reader(None, None)
    drain(end, started=False)
    mark = roundtrip(source, end.get_checkpoint_mark())
    append(open_path, als(NOW_S + 18, 18) + b"\n")
    open_path.rename(open_path.with_suffix(".seg"))
    assert [line for _, _, line in flat(drain(source.create_reader(None, mark), started=False))] == [
        als(NOW_S + 18, 18)]


def test_a_drained_reader_records_its_position_and_the_next_one_starts_there(tmp_path: Path) -> None:
    write_segment(tmp_path, 0, "pv", [als(NOW_S, i) for i in range(10)], sealed=False)
    write_segment(tmp_path, 1, "mongoErr", [als(NOW_S, i) for i in range(10, 13)])
    first = reader(tmp_path, batch_lines=4)
    before = drain(first, started=False, limit=2)
    spool_source.request_drain(tmp_path)
    assert not first.advance() and first.get_watermark() == MAX_TIMESTAMP
    assert spool_source.drained(tmp_path)
    spool_source.commit_drain(tmp_path)  # what pipelines.stream does once the job has finished
    after = drain(reader(tmp_path, batch_lines=4), started=False)
    assert sorted(flat(before) + flat(after)) == sorted(spool_lines(tmp_path))
    spool_source.request_drain(tmp_path)
    spool_source.reset_drain(tmp_path)  # a stop that never finished is void at the next start
    assert drain(reader(tmp_path, batch_lines=4), started=False) == after


def test_finalize_deletes_sealed_segments_before_the_position_never_an_open_one(tmp_path: Path) -> None:
    paths = [write_segment(tmp_path, 0, "pv", [b"a"]), write_segment(tmp_path, 1, "pv", [b"b"], sealed=False),
             write_segment(tmp_path, 2, "mongoErr", [b"c"]), write_segment(tmp_path, 3, "pv", [b"d"]),
             write_segment(tmp_path, 4, "pv", [b"e"], sealed=False)]
    SpoolMark(str(tmp_path), {}, {}, None).finalize_checkpoint()
    SpoolMark(str(tmp_path), {"pv": (None, 0)}, {}, None).finalize_checkpoint()
    assert all(p.exists() for p in paths)
    mark = SpoolMark(str(tmp_path), {"pv": (3, 1), "mongoErr": (3, 0)}, {}, None)
    mark.finalize_checkpoint()
    mark.finalize_checkpoint()  # idempotent
    assert [p.exists() for p in paths] == [False, True, False, True, True]
    (segment_dir(tmp_path) / "next_seq").write_text("5")
    SpoolMark(str(tmp_path), {"pv": (9, 0)}, {}, None).finalize_checkpoint()  # the spool was reset behind it
    assert [p.exists() for p in paths] == [False, True, False, True, True]
    SpoolMark(str(tmp_path), {"pv": (5, 0)}, {}, None).finalize_checkpoint()
    assert [p.exists() for p in paths] == [False, True, False, False, True]
    assert (segment_dir(tmp_path) / "next_seq").exists()


def test_a_reread_after_a_crash_cuts_the_same_batches_as_before(tmp_path: Path) -> None:
    """The cuts journal: batches handed out while an open segment grew are cut again exactly so by a reader
    started after a crash, though the segment is now whole; what follows them is cut anew, never overlapping."""
    path = write_segment(tmp_path, 0, "pv", [als(NOW_S, i) for i in range(3)], sealed=False)
    first = reader(tmp_path, batch_lines=4)
    before = drain(first, started=False)
    append(path, b"".join(als(NOW_S, i) + b"\n" for i in range(3, 9)))
    before += drain(first, limit=1)  # 4 of the 6 new lines: the 2 left are buffered, not handed out
    first.get_checkpoint_mark()  # the journal is fsynced with each checkpoint
    append(path, b"".join(als(NOW_S, i) + b"\n" for i in range(9, 20)))
    path.rename(path.with_suffix(".seg"))
    again = drain(reader(tmp_path, batch_lines=4), started=False)  # a new process: no mark, no replay point
    cut = [(b.shard, b.seq, b.offsets, b.lines, b.watermark_ms) for b in again[:len(before)]]
    assert cut == [(b.shard, b.seq, b.offsets, b.lines, b.watermark_ms) for b in before]  # the same verdicts
    assert before[1].watermark_ms is not None
    assert [len(b.lines) for b in before] == [3, 4] and [len(b.lines) for b in again[2:]] == [4, 4, 4, 1]
    assert sorted(flat(again)) == sorted(spool_lines(tmp_path))
    assert drain(reader(tmp_path, batch_lines=7), started=False)[1].offsets == again[1].offsets  # any batch size


def test_the_replay_point_keeps_what_open_windows_need_and_a_crashed_run_resumes_there(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(spool_source, "_now", lambda: clock[0])
    monkeypatch.setattr(spool_source, "_persisted", {})
    base = NOW_S - 1000
    old = write_segment(tmp_path, 0, "pv", [als(base + i, i) for i in range(5)])  # final once W > base + 4 + 60
    mid = write_segment(tmp_path, 1, "pv", [als(base + 100 + i, i) for i in range(5)])
    write_segment(tmp_path, 2, "pv", [als(base + 200 + i, i) for i in range(5)], sealed=False)
    r = reader(tmp_path, batch_lines=5, max_out_of_order_s=0, replay_span_s=60, publish_margin_s=10)
    drain(r, started=False)
    mark = r.get_checkpoint_mark()
    assert mark.replay == {"pv": (0, 0)} and mark.replay_watermark_ms is None  # no watermark 10 s old yet
    mark.finalize_checkpoint()
    assert old.exists()
    clock[0] += 11  # the watermark (base + 204 s) is now 10 s old: windows of segment 0 and 1 are final
    mark = roundtrip(r._source, r.get_checkpoint_mark())
    assert mark.replay == {"pv": (2, 0)} and mark.replay_watermark_ms == (base + 204) * 1000
    mark.finalize_checkpoint()
    assert not old.exists() and not mid.exists()
    saved = json.loads((tmp_path / "reader" / "replay.json").read_text())
    assert saved == {"from": {"pv": [2, 0]}, "watermark_ms": (base + 204) * 1000}
    # kill -9: a new reader starts at the replay point under the replay watermark, the same cuts again
    after = reader(tmp_path, batch_lines=2, max_out_of_order_s=0, replay_span_s=60)
    assert after.get_watermark() == Timestamp(base + 204)
    assert [(b.source, b.seq, len(b.lines), b.watermark_ms) for b in drain(after, started=False)] == [
        ("0000000000000002.pv", 0, 5, (base + 204) * 1000)]  # first read under a lower one: now the floor
    # a clean stop replaces the replay point with its position: nothing is read again
    spool_source.request_drain(tmp_path)
    assert not after.advance()
    spool_source.commit_drain(tmp_path)
    assert not (tmp_path / "reader" / "replay.json").exists()
    assert drain(reader(tmp_path), started=False) == []


def test_the_replay_keeps_at_most_replay_bytes(tmp_path: Path) -> None:
    for seq in range(4):
        write_segment(tmp_path, seq, "pv", [als(NOW_S + seq, i) for i in range(10)])
    size = list_segments(tmp_path)[0].path.stat().st_size
    r = reader(tmp_path, batch_lines=10, replay_span_s=3600, replay_bytes=2 * size, publish_margin_s=0)
    drain(r, started=False)
    assert r.get_checkpoint_mark().replay == {"pv": (2, 0)}  # the newest two segments, not the first two


def test_event_time_batches_never_behind_the_watermark(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]  # processing time, moved by the test: idleness is then exact, not a race with sleep
    monkeypatch.setattr(spool_source, "_now", lambda: clock[0])
    base = NOW_S - 100
    write_segment(tmp_path, 0, "pv", [als(base + 10, 0), als(base + 20, 1), b"us,bad,{}", als(base + 15, 2),
                                      b"no timestamp", als(base + 3, 3), als(NOW_S + 3600, 4), als(base + 21, 5)])
    r = reader(tmp_path, batch_lines=2, max_out_of_order_s=5, poll_interval_s=0.05, idle_stop_s=0.6,
               idle_timeout_s=0.3)
    assert r.get_watermark() == MIN_TIMESTAMP
    seen = []
    for k in range(4):
        assert r.advance() if k else r.start()
        seen.append((r.get_current_timestamp(), r.get_watermark(), r.get_current().watermark_ms))
    assert seen == [
        (Timestamp(base + 20), Timestamp(base + 15), None),  # max of the batch; watermark = max - 5 s
        (Timestamp(base + 15), Timestamp(base + 15), (base + 15) * 1000),  # "bad" moves nothing
        (Timestamp(base + 15), Timestamp(base + 15), (base + 15) * 1000),  # older: stamped at the watermark
        (Timestamp(base + 21), Timestamp(base + 16), (base + 15) * 1000),  # an hour ahead: ignored (max_future_s)
    ]
    assert not r.advance()
    assert r.get_watermark() == Timestamp(base + 16)  # not idle yet
    clock[0] += 0.35
    assert not r.advance()
    # idle: event time goes on at the wall clock's pace from the latest line
    assert r.get_watermark() == Timestamp(base + 16.35)
    clock[0] += 0.3
    assert not r.advance()
    assert r.get_watermark() == MAX_TIMESTAMP  # idle_stop_s
    assert spool_source.drained(tmp_path)  # ended like a clean stop: the next start replays nothing


def test_an_empty_spool_starts_at_the_first_segment_that_appears(tmp_path: Path) -> None:
    r = reader(tmp_path)
    assert not r.start()
    assert r.get_checkpoint_mark().positions == {}
    write_segment(tmp_path, 42, "pv", [als(NOW_S, 0)], sealed=False)
    assert [b.source for b in drain(r)] == ["0000000000000042.pv"]


# ---- on Prism ----

WINDOW = 10
CATEGORIES = ("pv", "mongoErr")


def note(folder: str, name: str, record: dict[str, Any]) -> None:
    """One file per record: the LOOPBACK workers are threads of this process, and duplicates must show."""
    record["wall"] = time.time()
    final = Path(folder, f"{name}-{uuid.uuid4().hex}.json")
    temp = final.with_name(f".{final.name}.tmp")  # renamed into place: notes() never reads half a file
    temp.write_text(json.dumps(record))
    temp.replace(final)


def notes(folder: Path, name: str) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in folder.glob(f"{name}-*.json")]


class NoteBatch(beam.DoFn):
    def __init__(self, folder: Path) -> None:
        self.folder = str(folder)

    def process(self, b: LineBatch, ts: Any = beam.DoFn.TimestampParam) -> None:
        note(self.folder, "batch", {"source": b.source, "shard": b.shard, "seq": b.seq, "category": b.category,
                                    "offsets": b.offsets, "lines": [x.decode() for x in b.lines], "ts": float(ts)})


class NoteWindow(beam.DoFn):
    def __init__(self, folder: Path) -> None:
        self.folder = str(folder)

    def process(self, kv: tuple[str, int], w: Any = beam.DoFn.WindowParam) -> None:
        note(self.folder, "window", {"category": kv[0], "start": float(w.start), "count": kv[1]})


def per_line(b: LineBatch) -> list[window.TimestampedValue]:
    out = []
    for line in b.lines:
        ms = event_ms(line)
        if ms is not None:
            out.append(window.TimestampedValue((b.category, 1), ms / 1000))
    return out


async def write_spool(root: Path, appends: list[tuple[str, list[bytes]]], pause: float = 0.0,
                      **kw: Any) -> float:
    """Append through the gateway's writer (group commit, rolling, sealing on close); when the last line was
    acknowledged."""
    writer = SpoolWriter(root, fsync=False, **kw)
    for category, lines in appends:
        await writer.append(category, lines)
        await asyncio.sleep(pause)
    done = time.time()
    await writer.close()
    return done


@pytest.mark.integration
def test_streams_the_spool_on_prism(prism: PrismServer, tmp_path: Path) -> None:
    spool, out = tmp_path / "spool", tmp_path / "out"
    out.mkdir()
    base = (NOW_S // WINDOW + 7) * WINDOW  # ahead of the clock: event time runs 20x faster than the wall
    # before the pipeline: 2 x 1000 lines in sealed segments over [base - 20 s, base)
    before = [(CATEGORIES[k % 2], [als(base - 20 + (k * 100 + i) * 0.01, i) for i in range(100)]) for k in range(20)]
    asyncio.run(write_spool(spool, before, segment_bytes=10_000))
    first_segments = {s.path for s in list_segments(spool)}
    assert len(first_segments) > 4

    p = beam.Pipeline(options=PipelineOptions([*prism.options(), "--streaming"]))
    read = p | ReadFromSpool(str(spool), batch_lines=200, max_out_of_order_s=30, poll_interval_s=0.1,
                             idle_stop_s=1.5)
    _ = read.lines | "NoteBatch" >> beam.ParDo(NoteBatch(out))
    _ = (read.lines
         | beam.FlatMap(per_line)
         | beam.WindowInto(window.FixedWindows(WINDOW))
         | beam.CombinePerKey(sum)
         | beam.ParDo(NoteWindow(out)))
    _ = read[STATS] | beam.Map(lambda s: note(str(out), "stats", s))
    result = p.run()
    try:
        deadline = time.monotonic() + 30
        while not notes(out, "batch") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert notes(out, "batch"), "nothing read within 30 s"
        # while it runs: 60 appends of 100 lines over 6 s, 2 s of event time each; some with bad timestamps
        live = [(CATEGORIES[k % 2], [als(base + (k * 100 + i) * 0.02, i) for i in range(100)]
                 + ([b'us,notatime,{"k":%d}' % k] if k % 10 == 0 else [])) for k in range(60)]
        live_done = asyncio.run(write_spool(spool, live, pause=0.1, segment_seconds=1.0))
        deleted_while_running = not first_segments & {s.path for s in list_segments(spool)}
        # and one segment the gateway left open (no writer: the source ends with it still .open)
        seq = int((segment_dir(spool) / "next_seq").read_text())
        open_path = write_segment(spool, seq, "pv", [als(base + 120, i) for i in range(5)], sealed=False)
        assert result.wait_until_finish(duration=60_000) == PipelineState.DONE
    finally:
        if not PipelineState.is_terminal(result.state):
            result.cancel()

    written = {line.decode(): category for category, lines in [*before, *live] for line in lines}
    written.update({line.decode(): "pv" for _, line in read_lines(open_path, 0, 1 << 20)[0]})
    batches = notes(out, "batch")
    got = [(b["source"], o, line) for b in batches for o, line in zip(b["offsets"], b["lines"], strict=True)]
    assert len(written) == 2000 + 6000 + 6 + 5  # lines are unique: a repeat or a loss shows below
    assert Counter(line for _, _, line in got) == Counter(list(written))  # every line exactly once
    assert all(written[line] == source.split(".")[1] for source, _, line in got)  # in its category's segment
    for source in {s for s, _, _ in got}:  # offsets: each segment read whole, from 0, line after line
        lines = sorted((o, line) for s, o, line in got if s == source)
        assert [o for o, _ in lines] == [0, *accumulate(len(x.encode()) + 1 for _, x in lines[:-1])]
    assert all(b["category"] == b["source"].split(".")[1] and b["seq"] == b["offsets"][0] for b in batches)
    for b in batches:  # stamped with the latest event time of its lines (or the watermark, when later)
        times = [ms for ms in map(event_ms, (x.encode() for x in b["lines"])) if ms is not None]
        assert not times or round(b["ts"] * 1000) >= max(times)
    assert sum(s["lines_read"] for s in notes(out, "stats")) == len(written)

    want: Counter[tuple[str, float]] = Counter()
    for line, category in written.items():
        ms = event_ms(line.encode())
        if ms is not None:
            want[category, float(ms // 1000 // WINDOW * WINDOW)] += 1
    windows = notes(out, "window")
    assert len(windows) == len(want)
    assert {(w["category"], w["start"]): w["count"] for w in windows} == want
    assert min(w["wall"] for w in windows) < live_done - 2  # windows close while lines still arrive

    assert deleted_while_running  # finalize removed the first, fully read segments during the run
    assert [s.path for s in list_segments(spool)] == [open_path]  # every sealed one read and deleted, not it


def test_unread_bytes_is_what_no_reader_has_cut_yet_not_the_spools_size(tmp_path: Path) -> None:
    lines = [als(NOW_S, i) for i in range(8)]
    write_segment(tmp_path, 0, "pv", lines[:4])
    write_segment(tmp_path, 1, "pv", lines[4:], sealed=False)
    total = spool_bytes(tmp_path)
    assert spool_source.unread_bytes(tmp_path) == total  # nothing read yet
    r = reader(tmp_path, batch_lines=3)
    drain(r, limit=1, started=False)  # one batch of 3 lines handed out, and recorded in the cuts journal
    assert spool_source.unread_bytes(tmp_path) == total - sum(len(line) + 1 for line in lines[:3])
    drain(r)
    assert spool_source.unread_bytes(tmp_path) == 0 and spool_bytes(tmp_path) == total  # read, still kept
