"""Routing: selection by category (exact, glob), area and field conditions; fan-out; unmatched counts."""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import orjson
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import runner_options
from transforms.event import Event, EventBatch
from transforms.route import UNMATCHED, Condition, Matcher, Route, RouteSpec, route_batch, route_tag


def ev(category: str, area: str = "us", offset: int = 0, **fields: Any) -> Event:
    return Event(area, 1389913256544, category, fields, "f", offset, b"raw", orjson.dumps(fields), {})


@pytest.mark.parametrize(
    ("matcher", "event", "hit"),
    [
        (Matcher(categories=("pv",)), ev("pv"), True),
        (Matcher(categories=("pv",)), ev("pvx"), False),
        (Matcher(categories=("mongo*",)), ev("mongoErr"), True),
        (Matcher(categories=("mongo*",)), ev("error"), False),
        (Matcher(areas=("us", "f?")), ev("pv", "fr"), True),
        (Matcher(areas=("us",)), ev("pv", "de"), False),
        (Matcher(where=(Condition("type", "==", "OK"),)), ev("payment", type="OK"), True),
        (Matcher(where=(Condition("type", "==", "OK"),)), ev("payment", type="start"), False),
        (Matcher(where=(Condition("type", "!=", "OK"),)), ev("payment"), True),  # missing is != anything
        (Matcher(where=(Condition("data.amount", ">=", 1000),)), ev("payment", data={"amount": 1999}), True),
        (Matcher(where=(Condition("data.amount", ">=", 1000),)), ev("payment", data={"amount": "lots"}), False),
        (Matcher(where=(Condition("lv", "in", [1, 2]),)), ev("session", lv=2), True),
        (Matcher(where=(Condition("lv", "not_in", [1, 2]),)), ev("session", lv=3), True),
        (Matcher(where=(Condition("lv", "in", [1]),)), ev("session", lv=[1]), False),
        (Matcher(where=(Condition("message", "regex", "^mysql"),)), ev("error", message="mysql gone"), True),
        (Matcher(where=(Condition("message", "regex", "^mysql"),)), ev("error", message=5), False),
        (Matcher(where=(Condition("uid", "exists"),)), ev("dau", uid=1), True),
        (Matcher(where=(Condition("uid", "missing"),)), ev("dau", uid=1), False),
        (Matcher(where=(Condition("area", "==", "th"),)), ev("dau", "th"), True),
        (Matcher(categories=("dau",), where=(Condition("uid", ">", 5),)), ev("dau", uid=9), True),
    ],
)
def test_matcher(matcher: Matcher, event: Event, hit: bool) -> None:
    assert matcher(event) is hit


def test_conditions_read_decorations() -> None:
    e = ev("pv")
    e.decor = {"_cntry": "GB"}
    assert Matcher(where=(Condition("_cntry", "==", "GB"),))(e)


def routes() -> list[RouteSpec]:
    return [
        RouteSpec("dau", Matcher(categories=("dau",))),
        RouteSpec("indexed", Matcher(categories=("dau", "pv", "error")), (("trace",), ("_log_info", "sid"))),
        RouteSpec("errors", Matcher(categories=("error", "mongo*"))),
    ]


def test_fan_out_and_unmatched() -> None:
    batch = EventBatch("f", "s", 0, [ev("dau", offset=0), ev("pv", offset=1), ev("mongoErr", offset=2),
                                     ev("error", offset=3), ev("session", offset=4)])
    counts: dict[str, Any] = {}
    out = route_batch(batch, routes(), counts)
    assert {name: [e.offset for e in b.events] for name, b in out.items()} == {
        "dau": [0], "indexed": [0, 1, 3], "errors": [2, 3]
    }
    assert counts == {"routes": {"dau": 1, "indexed": 3, "errors": 2}, UNMATCHED: 1}


def test_a_route_drop_shows_only_in_that_routes_documents() -> None:
    shared = {"sid": "s1", "uid": 7}
    e = ev("dau", trace="t", _log_info=shared)
    out = route_batch(EventBatch("f", "s", 0, [e]), routes(), {})
    indexed, dau = out["indexed"], out["dau"]
    assert indexed.events[0].document(indexed.drop) == {"_log_info": {"uid": 7}, "_area": "us", "_t": e.ts}
    assert dau.events[0].document(dau.drop)["trace"] == "t"
    assert e.fields == {"trace": "t", "_log_info": {"sid": "s1", "uid": 7}} and shared == {"sid": "s1", "uid": 7}


def test_route_transform_outputs_one_pcollection_per_route() -> None:
    batch = EventBatch("f", "s", 0, [ev("dau", offset=0), ev("error", offset=1), ev("click", offset=2)])
    specs = routes()
    with TestPipeline(options=runner_options()) as p:
        result = p | beam.Create([batch]) | Route(specs)
        for spec, expected in zip(specs, ([0], [0, 1], [1]), strict=True):
            offsets = result[route_tag(spec.name)] | f"Offsets{spec.name}" >> beam.FlatMap(
                lambda b: [e.offset for e in b.events]
            )
            assert_that(offsets, equal_to(expected), label=f"check {spec.name}")
        assert_that(result.counts | beam.Map(lambda c: c[UNMATCHED]), equal_to([1]), label="unmatched")


MIXED = [
    RouteSpec("pv", Matcher(categories=("pv",))),
    RouteSpec("fr_pv", Matcher(categories=("pv",), areas=("fr",))),
    RouteSpec("ok", Matcher(categories=("payment", "pv"), where=(Condition("type", "==", "OK"),))),
    RouteSpec("mongo", Matcher(categories=("mongo*",))),
    RouteSpec("all_us", Matcher(areas=("us",))),
]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["pv", "payment", "mongoErr", "dau"]), st.sampled_from(["us", "fr"]),
                          st.sampled_from(["OK", "KO", None])), max_size=30))
def test_route_batch_equals_each_matcher_applied_to_each_event(rows: list[tuple[str, str, str | None]]) -> None:
    events = [ev(c, a, offset=i, **({} if t is None else {"type": t})) for i, (c, a, t) in enumerate(rows)]
    counts: dict[str, Any] = {}
    out = route_batch(EventBatch("f", "s", 0, events), MIXED, counts)
    for spec in MIXED:  # the per-category plan must give what each matcher says of each event, in order
        assert [e.offset for e in out[spec.name].events] == [e.offset for e in events if spec.matcher(e)]
    assert counts[UNMATCHED] == sum(not any(s.matcher(e) for s in MIXED) for e in events)
