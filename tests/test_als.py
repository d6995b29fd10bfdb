"""Every rule and error of the ALS line parser, table-driven (docs/architecture.md, "The ALS line")."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from transforms import als
from transforms.als import TimeBounds, parse_line, parse_timestamp
from transforms.event import DeadLetter, Event

MS = 1389913256544  # 2014-01-16 23:00:56.544 UTC
S = 1389913256


@pytest.mark.parametrize(
    ("line", "area", "ts", "fields"),
    [
        (f"us,{MS},{{\"uid\":1}}", "us", MS, {"uid": 1}),
        (f"fr,{S},{{\"a\":1}}", "fr", S * 1000, {"a": 1}),  # seconds are scaled to ms
        (f"de,{MS},", "de", MS, {}),  # empty payload is {}
        (f"ae,{MS},{{\"msg\":\"a,b,c\"}}", "ae", MS, {"msg": "a,b,c"}),  # split on the first two commas only
        (f"th,{MS},{{\"a\":1}}\r", "th", MS, {"a": 1}),  # one trailing \r is stripped
        (f"nl,{MS},{{\"n\":{{\"x\":[1,2.5,null]}}}}", "nl", MS, {"n": {"x": [1, 2.5, None]}}),
        (f"us,{als.MS_THRESHOLD + 1},{{}}", "us", als.MS_THRESHOLD + 1, {}),  # just above: milliseconds
        (f"us,{als.MIN_SECONDS},{{}}", "us", als.MIN_SECONDS * 1000, {}),  # the smallest valid seconds
        (f"us,{MS}, {{\"a\":1}} ", "us", MS, {"a": 1}),  # JSON whitespace around the object is JSON
    ],
)
def test_valid_lines(line: str, area: str, ts: int, fields: dict) -> None:
    event = parse_line(line.encode(), "src.0.log", 7, "pv")
    assert isinstance(event, Event), event
    assert (event.area, event.ts, event.fields, event.category) == (area, ts, fields, "pv")
    assert (event.source, event.offset) == ("src.0.log", 7)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"", als.EMPTY_LINE),
        (b"\r", als.EMPTY_LINE),
        (b"us", als.NOT_3_FIELDS),
        (b"us,1387789257065", als.NOT_3_FIELDS),
        (b",1387789257065,foo", als.EMPTY_AREA),
        (b"\xff\xfe,1387789257065,{}", als.BAD_AREA),
        (b"u\x00s,1387789257065,{}", als.AREA_CONTROL),
        (b"us\t,1387789257065,{}", als.AREA_CONTROL),
        (b"\x1b[31mus,1387789257065,{}", als.AREA_CONTROL),
        (b"us\x7f,1387789257065,{}", als.AREA_CONTROL),
        (b"us,45,bar", als.TS_INVALID),
        (b"us,,{}", als.TS_INVALID),
        (b"us,abc,{}", als.TS_INVALID),
        (b"us,-1387789257,{}", als.TS_INVALID),
        (b"us,+1387789257,{}", als.TS_INVALID),
        (b"us, 1387789257,{}", als.TS_INVALID),
        (b"us,1_387_789_257,{}", als.TS_INVALID),
        (b"us,1387789257.5,{}", als.TS_INVALID),
        (b"us,1262275199,{}", als.TS_INVALID),  # one second before 2010-01-01
        (b"us,253402300800,{}", als.TS_INVALID),  # seconds beyond year 9999
        (b"us,99999999999999999999,{}", als.TS_INVALID),  # milliseconds beyond year 9999
        (b'spil,1393553053280,"\\/Sysy64\\/friends?fields=id,installed | Invalid OAuth"', als.NOT_JSON),
        (b'fr,1390905013221,{"action":"sell","ide', als.NOT_JSON),  # truncated line (CHANGELOG)
        (b"us,1387789257065,[1,2]", als.NOT_JSON),
        (b"us,1387789257065,42", als.NOT_JSON),
        (b"us,1387789257065,{}x", als.NOT_JSON),
        (b"us,1387789257065,{\"a\":\xff}", als.NOT_JSON),
    ],
)
def test_dead_letters_carry_reason_raw_and_source(line: bytes, reason: str) -> None:
    dead = parse_line(line, "s/pv.0.log", 99, "pv")
    assert isinstance(dead, DeadLetter)
    assert dead.error == reason
    assert (dead.source, dead.offset, dead.stage, dead.category) == ("s/pv.0.log", 99, "parse", "pv")
    assert dead.raw == line.decode("utf-8", "backslashreplace")


def test_historical_timestamps_stay_historical() -> None:
    """The original turned past second timestamps into "now"; a 2014 line must stay 2014."""
    event = parse_line(b"us,1389913256,{}", "f", 0, "dau")
    assert isinstance(event, Event)
    assert datetime.fromtimestamp(event.ts / 1000, UTC).year == 2014


def test_millisecond_precision_is_kept() -> None:
    event = parse_line(b"us,1389913256544,{}", "f", 0, "dau")
    assert isinstance(event, Event) and event.ts % 1000 == 544


@pytest.mark.parametrize(
    ("seconds_from_now", "reason"),
    [(-1_000_001, als.TOO_OLD), (-1_000_000, None), (0, None), (1_000_000, None), (1_000_001, als.TOO_NEW)],
)
def test_time_bounds(seconds_from_now: int, reason: str | None) -> None:
    now_ms = 2_000_000_000_000
    bounds = TimeBounds.around(now_ms=now_ms, max_age_s=1_000_000, max_future_s=1_000_000)
    line = f"us,{now_ms + seconds_from_now * 1000},{{}}".encode()
    result = parse_line(line, "f", 0, "pv", bounds)
    if reason is None:
        assert isinstance(result, Event)
    else:
        assert isinstance(result, DeadLetter) and result.error == reason


def test_str_input_and_payload_bytes_kept() -> None:
    event = parse_line('us,1389913256544,{"a": 1}', "f")
    assert isinstance(event, Event)
    assert event.payload == b'{"a": 1}' and event.raw == b'us,1389913256544,{"a": 1}'


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"1283931748345", 1283931748345),  # above the threshold: milliseconds
        (b"1389913256", 1389913256000),  # seconds
        (b"1283931748344", None),  # at the threshold it is seconds, and beyond year 9999
        (b"45", None),
        (b"", None),
    ],
)
def test_parse_timestamp(text: bytes, expected: int | None) -> None:
    assert parse_timestamp(text) == expected
