"""The backfill's hot path against its references: the batch functions give exactly what the pure per-line
functions give (`parse_batch` vs `parse_line`, `doc_ids` vs `doc_id`, the archive's columnar rows vs the rows
of decorated events), on every kind of line."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.archives import COMPRESSED_EXPANSION, FileRange, plan_inputs
from connectors.files import archive_rows, event_partitions, row_partitions
from transforms.als import MAX_LINE_BYTES, MS_THRESHOLD, TimeBounds, parse_batch, parse_line, parse_lines
from transforms.decorate import IndexNamer, decorate_batch
from transforms.event import Event, LineBatch
from transforms.keys import doc_id, doc_ids

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

area = st.one_of(st.sampled_from([b"us", b"fr", b"", b"\x00", b"a\x7f", b"\xff", b"\xed\xa0\x80", "é".encode()]),
                 st.binary(max_size=4))
timestamp = st.one_of(
    st.sampled_from([MS_THRESHOLD, MS_THRESHOLD + 1, 1262275199, 1262275200, 253402300799, 253402300800,
                     253402300799999, 253402300800000, 0, 10**18, 10**19, 10**25]).map(lambda n: b"%d" % n),
    st.integers(0, 10**20).map(lambda n: b"%d" % n),
    st.sampled_from([b"", b"+1389913256", b"-1", b" 1389913256", b"1_389_913_256", b"0001389913256", b"\xd9\xa1"]),
    st.binary(max_size=6),
)
payload = st.one_of(
    st.sampled_from([b"{}", b'{"a":1}', b'{"a":{"b":[1,2]}}', b"[1]", b"1", b"null", b'"x"', b'{"a":', b"",
                     b'{"a":"\xff"}', b'{"a":1} ', b' {"a":1}', b'{"a":1}\r', b"{}\r", b'{"a":NaN}']),
    st.binary(max_size=20),
)
als_line = st.builds(lambda a, t, p: b"%s,%s,%s" % (a, t, p), area, timestamp, payload)
lines = st.lists(st.one_of(als_line, als_line, st.binary(max_size=30), st.sampled_from([b"", b"\r", b",,"])),
                 max_size=25)
bounds = st.one_of(st.just(TimeBounds()),
                   st.builds(TimeBounds, st.one_of(st.none(), st.integers(0, 2 * 10**12)),
                             st.one_of(st.none(), st.integers(10**12, 3 * 10**14))))


def outcome(result: object) -> tuple:
    """Everything an event or a dead letter carries, comparable."""
    if isinstance(result, Event):
        return ("event", result.area, result.ts, result.category, result.fields, result.source, result.offset,
                result.raw, result.payload, result.decor, result.doc_id, result.index)
    return ("dead", result.raw, result.error, result.source, result.offset, result.stage, result.detail,  # type: ignore[attr-defined]
            result.category)  # type: ignore[attr-defined]


@PROPERTY
@given(lines=lines, bounds=bounds, category=st.sampled_from(["pv", "mongoErr"]))
def test_parse_batch_is_parse_line_on_every_line(lines: list[bytes], bounds: TimeBounds, category: str) -> None:
    offsets = [i * 7 for i in range(len(lines))]
    events, dead = parse_batch(LineBatch("logs/pv.0.log", "s", 3, category, offsets, lines), bounds)
    expected = [parse_line(line, "logs/pv.0.log", off, category, bounds)
                for off, line in zip(offsets, lines, strict=True)]
    assert [outcome(e) for e in events.events] == [outcome(r) for r in expected if isinstance(r, Event)]
    assert [outcome(d) for d in dead] == [outcome(r) for r in expected if not isinstance(r, Event)]
    assert (events.source, events.shard, events.seq) == ("logs/pv.0.log", "s", 3)


good_line = st.builds(lambda a, t, p: b"%s,%d,%s" % (a, t, p), st.sampled_from([b"us", b"fr"]),
                      st.integers(1389913256, 1389913256 + 90 * 86400),  # three months of seconds
                      st.sampled_from([b'{"a":1}', b"{}", b'{"b":"x"}']))


@PROPERTY
@given(lines=st.lists(st.one_of(good_line, good_line, als_line), max_size=25), bounds=bounds,
       pattern=st.sampled_from(["@ym", "@ymd", "@yw", "rs@ym", "all"]))
def test_archive_rows_are_the_rows_of_events_decorated_without_rules(lines: list[bytes], bounds: TimeBounds,
                                                                      pattern: str) -> None:
    batch = LineBatch("logs/pv.0.log", "s", 3, "pv", [i * 7 for i in range(len(lines))], lines, watermark_ms=5)
    namer = IndexNamer("dpipe", pattern)
    events, _ = decorate_batch(parse_batch(batch, bounds)[0], [], namer, {})
    parsed, dead = parse_lines(batch, bounds)
    assert len(dead) == len(parse_batch(batch, bounds)[1])
    expected = [(part, category, table.to_pylist()) for part, category, table in event_partitions(events)]
    if not parsed.ts:
        assert expected == []
        return
    rows = archive_rows(batch, parsed, namer)
    assert (rows.source, rows.shard, rows.seq, rows.watermark_ms) == ("logs/pv.0.log", "s", 3, 5)
    assert [(part, category, table.to_pylist()) for part, category, table in row_partitions(rows)] == expected


def test_parse_batch_takes_the_reference_path_for_long_lines_and_crlf() -> None:
    long = b"us,1389913256," + b'{"a":"' + b"x" * MAX_LINE_BYTES + b'"}'
    batch = LineBatch("pv.0.log", "s", 0, "pv", [0, 1, 2], [long, b'us,1389913256,{"a":1}\r', b"us,1389913256,{}"])
    events, dead = parse_batch(batch)
    assert [d.error for d in dead] == ["line too long"]
    assert [(e.raw, e.payload, e.ts) for e in events.events] == [
        (b'us,1389913256,{"a":1}', b'{"a":1}', 1389913256000), (b"us,1389913256,{}", b"{}", 1389913256000)]


@PROPERTY
@given(source=st.one_of(st.sampled_from(["logs/pv.0.log", "s3://b/a/pv.0.log", "hdfs:///x/y/"]), st.text(max_size=8)),
       rows=st.lists(st.tuples(st.integers(-1, 2**62), st.binary(max_size=300)), max_size=40))
def test_doc_ids_are_doc_id_of_each_line(source: str, rows: list[tuple[int, bytes]]) -> None:
    offsets, raws = [o for o, _ in rows], [r for _, r in rows]
    assert doc_ids(source, offsets, raws) == [doc_id(source, o, r) for o, r in rows]


def test_plan_inputs_lists_each_file_once_in_glob_or_size_order(tmp_path: Path) -> None:
    (tmp_path / "pv.0.log").write_bytes(b"x\n" * 50)  # 100 bytes: ranges of 40, 40, 20
    (tmp_path / "dau.0.log").write_bytes(b"y\n" * 15)  # 30 bytes: one range
    (tmp_path / "error_1.gz").write_bytes(b"z" * 10)  # compressed: one range, counted as 10 * expansion
    (tmp_path / "empty.0.log").write_bytes(b"")
    patterns = [str(tmp_path / "pv.0.log"), str(tmp_path / "*")]
    pv, dau, gz = (str(tmp_path / n) for n in ("pv.0.log", "dau.0.log", "error_1.gz"))
    listed = plan_inputs(patterns, 40)
    assert listed[:3] == [FileRange(pv, 0, 40), FileRange(pv, 40, 80), FileRange(pv, 80, 100)]  # glob order
    assert sorted(listed[3:], key=str) == [FileRange(dau, 0, None), FileRange(gz, 0, None)]
    expected = sorted(listed, key=lambda r: -(10 * COMPRESSED_EXPANSION if r.path == gz else (r.end or 30) - r.start))
    assert plan_inputs(patterns, 40, largest_first=True) == expected
