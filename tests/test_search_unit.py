"""Pure parts of the search sink: how `_bulk` item statuses are sorted, how documents are built."""

from __future__ import annotations

import orjson

from connectors.search import classify, document_bytes, template_body
from transforms.event import Event

ITEMS = [
    {"index": {"_id": "a", "status": 201}},
    {"index": {"_id": "b", "status": 200}},
    {"create": {"_id": "c", "status": 409, "error": {"type": "version_conflict_engine_exception"}}},
    {"index": {"_id": "d", "status": 429, "error": {"type": "es_rejected_execution_exception"}}},
    {"index": {"_id": "e", "status": 503}},
    {"index": {"_id": "f", "status": 400, "error": {"type": "mapper_parsing_exception", "reason": "bad"}}},
    {"index": {"_id": "g", "status": 404, "error": {"type": "index_not_found_exception"}}},
]


def test_item_statuses_decide_each_documents_fate() -> None:
    indexed, duplicates, retry, rejected = classify(ITEMS, "create")
    assert (indexed, duplicates, retry) == ([0, 1], [2], [3, 4])
    assert {i: status for i, (status, _) in rejected.items()} == {5: 400, 6: 404}
    assert rejected[5][1]["type"] == "mapper_parsing_exception"


def test_409_is_a_rejection_unless_creating() -> None:
    _, duplicates, _, rejected = classify(ITEMS, "index")
    assert duplicates == [] and 2 in rejected


def test_documents_carry_decorations_area_time_and_geo_point_without_dropped_fields() -> None:
    e = Event("us", 1389913256544, "pv", {"a": 1, "_log_info": {"uid": 1, "script_id": 2}}, "f", 0, b"", None,
              {"_cntry": "GB", "_lat": 51.5, "_lon": -0.2}, "id", "rs_2014_01")
    doc = orjson.loads(document_bytes(e, [("_log_info", "script_id")], data_stream=False))
    assert doc == {"a": 1, "_log_info": {"uid": 1}, "_cntry": "GB", "_lat": 51.5, "_lon": -0.2,
                   "_geo": {"lat": 51.5, "lon": -0.2}, "_area": "us", "_t": 1389913256544}
    assert e.fields["_log_info"] == {"uid": 1, "script_id": 2}
    assert orjson.loads(document_bytes(e, [], data_stream=True))["@timestamp"] == 1389913256544


def test_templates_tie_indices_to_the_ilm_policy_when_there_is_one() -> None:
    es, os_ = template_body("rs", "dpipe-rs-events"), template_body("rs")
    assert es["index_patterns"] == ["rs_*"] and es["template"]["mappings"] == os_["template"]["mappings"]
    assert es["template"]["settings"]["index.lifecycle.name"] == "dpipe-rs-events"
    assert "index.lifecycle.name" not in os_["template"]["settings"]
    ds = template_body("rs", "dpipe-rs-events", data_stream="rs-events")
    assert ds["data_stream"] == {} and ds["index_patterns"] == ["rs-events"]
    assert ds["template"]["mappings"]["properties"]["@timestamp"]["type"] == "date"
