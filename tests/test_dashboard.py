"""The dashboard's page data, its HTML page, the admin API's status and metrics, and the server over HTTP."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from connectors.dashboard import data
from connectors.dashboard.render import render_page, write_report
from connectors.dashboard.server import serve_in_thread
from connectors.dashboard.status import Rate, StatusCollector, metric_name, problems, watermarks


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))


def test_latest_keeps_the_last_row_per_id_in_file_age_order(tmp_path: Path) -> None:
    import os

    write_jsonl(tmp_path / "c" / "b-old.jsonl", [{"_id": "x", "v": 1}, {"_id": "y", "v": 1}])
    write_jsonl(tmp_path / "c" / "a-new.jsonl", [{"_id": "x", "v": 2}])
    os.utime(tmp_path / "c" / "b-old.jsonl", ns=(1_000_000_000, 1_000_000_000))  # older, though named later
    rows = data.latest(data.read_rows(tmp_path / "c"))
    assert {r["_id"]: r["v"] for r in rows} == {"x": 2, "y": 1}
    assert data.read_rows(tmp_path / "missing") == []


def test_overview_takes_a_backfills_counts_from_its_summary_and_samples_from_the_dead_letters() -> None:
    summary = {"lines_read": 5, "events": 3, "dead_letters": 2, "bytes_read": 100, "files_read": 1,
               "categories": {"pv": 1, "error": 2}, "dead_letter_reasons": {"empty line": 2},
               "routes": {"errors": 2}, "files": {"events": 2, "deadletter": 1}, "balanced": True}
    dead = [{"raw": "", "error": "empty line", "detail": None, "source": "f", "offset": n} for n in range(5)]
    page = data.overview(summary, dead, {"alarms": 4}, {})
    assert page["categories"] == {"error": 2, "pv": 1}
    assert page["dead_letters"][0]["reason"] == "empty line" and page["dead_letters"][0]["count"] == 2
    assert [s["offset"] for s in page["dead_letters"][0]["samples"]] == [0, 1, 2]
    assert {s["sink"]: (s["rows"], s["files"]) for s in page["sinks"]} == {
        "events": (3, 2), "deadletter": (2, 1), "alarms": (4, None)}


def test_overview_of_a_stream_counts_the_files() -> None:
    dead = [{"error": "not 3 fields"}, {"error": "not 3 fields"}, {"error": "empty area"}]
    page = data.overview(None, dead, {}, {"pv": 7})
    assert page["totals"] == {"events": 7, "dead_letters": 3}
    assert [(d["reason"], d["count"]) for d in page["dead_letters"]] == [("not 3 fields", 2), ("empty area", 1)]


def test_dead_letters_a_stream_wrote_again_after_a_crash_count_once(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "deadletter" / "part-1.jsonl", [
        {"_id": "a", "raw": "x", "error": "not 3 fields"}, {"_id": "b", "raw": "y", "error": "empty area"}])
    write_jsonl(tmp_path / "deadletter" / "part-2.jsonl", [{"_id": "a", "raw": "x", "error": "not 3 fields"}])
    sinks, reasons = data.outputs_counts(tmp_path)
    assert sinks["deadletter"] == 2 and reasons == {"not 3 fields": 1, "empty area": 1}
    page = data.load(tmp_path)["pages"]["overview"]
    assert page["totals"]["dead_letters"] == 2


def test_alarms_newest_first_with_their_condition() -> None:
    rows = [{"rule": "spike", "key": {"area": "fr"}, "window": {"start": "2014-01-18T14:00:00Z",
             "end": "2014-01-18T14:05:00Z"}, "aggregate": "count", "value": 400, "op": ">=", "threshold": 100.0,
             "severity": 4, "samples": ["a"]},
            {"rule": "surge", "key": {"area": "fr"}, "window": {"start": "2014-01-18T15:00:00Z",
             "end": "2014-01-18T15:10:00Z"}, "aggregate": "count", "value": 405, "previous": 6,
             "change_percent": 300.0, "severity": 3, "samples": []}]
    page = data.alarms(rows)
    assert [f["rule"] for f in page["firings"]] == ["surge", "spike"]
    assert [f["condition"] for f in page["firings"]] == ["+300% over 6", ">= 100"]
    assert page["firings"][1]["key"] == "area=fr" and page["firings"][1]["start"] == 1390053600000
    assert page["per_rule"] == {"spike": 1, "surge": 1}


def test_counters_are_sums_of_their_field_or_counts_per_key_over_time() -> None:
    rows = [{"counter": "revenue", "key": "us", "start": "2014-01-17T00:00:00Z", "interval_s": 3600,
             "count": 2, "field": "_usd", "sum": 12.5},
            {"counter": "revenue", "key": "us", "start": "2014-01-17T01:00:00Z", "interval_s": 3600,
             "count": 1, "field": "_usd", "sum": None},
            {"counter": "hits", "key": None, "start": "2014-01-17T00:00:00Z", "interval_s": 600, "count": 9}]
    page = {c["counter"]: c for c in data.counters(rows)["counters"]}
    assert page["revenue"]["series"] == [{"label": "us", "points": [[1389916800000, 12.5], [1389920400000, 0]]}]
    assert page["revenue"]["measure"] == "sum of _usd" and page["hits"]["measure"] == "count"
    assert page["hits"]["totals"] == {"all": 9}


def test_top_series_keeps_the_biggest_and_sums_the_rest() -> None:
    series = {f"k{i}": {0: float(i), 1: 1.0} for i in range(10)}
    shown = data.top_series(series, limit=3)
    assert [s["label"] for s in shown] == ["k9", "k8", "k7", "other (7)"]
    assert shown[-1]["points"] == [[0, 0 + 1 + 2 + 3 + 4 + 5 + 6], [1, 7.0]]


def test_cardinality_per_counter_and_period() -> None:
    rows = [{"counter": "uid", "key": "de", "period": p, "start": s, "estimate": e}
            for p, s, e in (("month", "2014-01-01", 900.0), ("day", "2014-01-19", 103.0),
                            ("day", "2014-01-18", 99.0))]
    page = data.cardinality(rows)["cardinality"]
    assert [(c["counter"], c["period"]) for c in page] == [("uid", "day"), ("uid", "month")]
    assert page[0]["series"][0]["points"] == [[1390003200000, 99.0], [1390089600000, 103.0]]


def test_statistics_histograms_add_up_and_tops_merge_across_windows() -> None:
    q = [{"stat": "lat", "field": "t", "key": "fr", "start": s, "count": n, "min": lo, "max": hi, "p50": p,
          "p99": p * 2, "histogram": {"<1": n - 1, ">=1": 1}}
         for s, n, lo, hi, p in (("2014-01-19T01:00:00Z", 5, 0.1, 3, 0.5), ("2014-01-19T00:00:00Z", 3, 0.2, 9, 0.4))]
    tops = [{"stat": "uris", "field": "uri", "key": None, "start": "2014-01-19T00:00:00Z", "count": 9,
             "top": [{"value": "/", "count": 5}, {"value": "/a", "count": 4}]},
            {"stat": "uris", "field": "uri", "key": None, "start": "2014-01-20T00:00:00Z", "count": 9,
             "top": [{"value": "/a", "count": 3}, {"value": "/b", "count": 2}]}]
    page = {s["stat"]: s for s in data.statistics(q + tops)["stats"]}
    lat = page["lat"]
    assert lat["bins"] == ["<1", ">=1"] and lat["histogram"]["fr"] == {"<1": 6, ">=1": 2}
    key = lat["keys"][0]
    assert (key["count"], key["windows"], key["min"], key["max"], key["p50"], key["p99"]) == (8, 2, 0.1, 9, 0.5, 1.0)
    assert page["uris"]["top"] == [{"value": "/a", "count": 7}, {"value": "/", "count": 5}, {"value": "/b", "count": 2}]


def test_funnels_users_per_step_and_conversion_per_dimension() -> None:
    rows = [{"funnel": "pay", "period": "month", "start": "2014-01-01", "dimensions": {"area": a},
             "steps": [{"step": "visit", "users": v, "conversion": 1.0}, {"step": "pay", "users": p,
                                                                           "conversion": p / v}],
             "overall": p / v} for a, v, p in (("us", 10, 5), ("fr", 8, 2))]
    (f,) = data.funnels(rows)["funnels"]
    assert f["steps"] == ["visit", "pay"]
    assert [(r["dimensions"], r["users"]) for r in f["rows"]] == [("area=fr", [8, 2]), ("area=us", [10, 5])]


def test_issues_show_their_plain_fields_most_seen_first() -> None:
    page = data.issues([{"_id": "a", "title": "x", "count": 1, "samples": ["s"]},
                        {"_id": "b", "title": "y", "count": 5, "first_seen": "t"}])
    assert page["columns"] == ["title", "count", "first_seen"]
    assert page["rows"] == [["y", 5, "t"], ["x", 1, None]]


def test_the_page_inlines_chart_js_and_data_that_cannot_close_its_script() -> None:
    html = render_page({"pages": {}, "evil": "</script><b>"}, None)
    assert "Chart.js v4" in html, "the library itself, not a link to it"
    assert "</script><b>" not in html and "\\u003c/script>\\u003cb>" in html


def test_problems_fail_health_on_a_failed_job_a_dead_writer_or_a_lagging_watermark() -> None:
    assert problems({"state": "RUNNING", "inputs": [{"name": "spool", "watermark_lag_s": 10}]}, 60) == []
    assert problems({"state": "FAILED"}, 60) == ["pipeline failed"]
    assert problems({"state": "RUNNING", "gateway": {"sink_healthy": False}}, 60) == [
        "the gateway's spool writer died"]
    assert "watermark lags" in problems({"inputs": [{"name": "spool", "watermark_lag_s": 61}]}, 60)[0]
    idle = {"inputs": [{"name": "spool", "kind": "source", "watermark_lag_s": 1},
                       {"name": "mongoErr", "kind": "category", "watermark_lag_s": 9999}]}
    assert problems(idle, 60) == [], "an idle category does not fail health"


def test_watermarks_per_input_from_the_sources_gauges() -> None:
    gauges = {"dpipe.input_watermark_ms/pv": 1000.0, "dpipe.input_watermark_ms/error": 500.0,
              "dpipe.geoip/db_build_epoch": 1.0}
    assert watermarks(gauges) == {"pv": 1000.0, "error": 500.0}


def test_rate_over_recent_samples() -> None:
    rate = Rate(window_s=10)
    assert rate.update(0, now=0.0) is None
    assert rate.update(50, now=5.0) == 10
    assert rate.update(250, now=30.0) == pytest.approx(200 / 25)


def test_every_beam_counter_becomes_a_prometheus_metric() -> None:
    status = {"healthy": True, "state": "RUNNING", "runner": "PrismRunner", "lines_in": 10, "lines_out": 9,
              "sinks": {"events": 8}, "dead_letters": {"empty line": 1},
              "inputs": [{"name": "spool", "watermark_lag_s": 2.5, "backlog_bytes": 100, "unread_bytes": 7}],
              "beam_counters": {"dpipe.late/alarms": 3, "dpipe.parse/events": 8},
              "beam_gauges": {"dpipe.geoip/db_build_epoch": 1530000000}}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(lambda: status))
    text = generate_latest(registry).decode()
    for line in ('dpipe_late_alarms_total 3.0', 'dpipe_parse_events_total 8.0', 'dpipe_geoip_db_build_epoch 1.53e+09',
                 'dpipe_job_state{runner="PrismRunner",state="RUNNING"} 1.0', 'dpipe_lines_in_total 10.0',
                 'dpipe_dead_letters_total{reason="empty line"} 1.0', 'dpipe_sink_rows_total{sink="events"} 8.0',
                 'dpipe_watermark_lag_seconds{input="spool"} 2.5', 'dpipe_spool_backlog_bytes{input="spool"} 100.0',
                 'dpipe_spool_unread_bytes{input="spool"} 7.0', 'dpipe_up 1.0'):
        assert line in text, line
    assert metric_name("dpipe.late", "pv-branch") == "dpipe_late_pv_branch"


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_the_server_answers_every_route_and_health_follows_the_status(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "deadletter" / "part-1.jsonl", [{"raw": "x", "error": "not 3 fields"}])
    write_jsonl(tmp_path / "funnels" / "part-1.jsonl", [])
    status = {"state": "RUNNING", "healthy": True, "problems": []}
    server = serve_in_thread(tmp_path, 0, lambda: dict(status))
    try:
        code, page = get(server.url + "/")
        assert code == 200 and b'"every_s"' in page and b"new Chart(" in page
        code, body = get(server.url + "/api/data")
        assert code == 200 and orjson.loads(body)["pages"]["overview"]["totals"]["dead_letters"] == 1
        assert orjson.loads(get(server.url + "/status")[1])["state"] == "RUNNING"
        assert get(server.url + "/healthz")[0] == 200
        status.update(state="FAILED", healthy=False, problems=["pipeline failed"])
        code, body = get(server.url + "/healthz")
        assert code == 503 and orjson.loads(body)["problems"] == ["pipeline failed"]
        assert b'dpipe_job_state{runner="",state="FAILED"} 1.0' in get(server.url + "/metrics")[1]
    finally:
        server.stop()


def test_write_report_is_one_offline_file(tmp_path: Path) -> None:
    path = write_report(tmp_path, data.load(tmp_path))
    html = path.read_text()
    assert path == (tmp_path / "report.html").resolve()
    assert " src=" not in html and "<link" not in html, "nothing is loaded from elsewhere"
    assert 'id="dpipe-data"' in html and "new Chart(" in html


def test_the_dashboard_command_refuses_a_missing_folder(tmp_path: Path, capsys) -> None:
    from pipelines.dashboard import main

    assert main(["--output", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such folder" in err


def test_the_grafana_dashboard_queries_metrics_the_admin_api_exposes() -> None:
    import re

    import yaml

    root = Path(__file__).resolve().parent.parent / "templates" / "grafana"
    dashboard = orjson.loads((root / "dpipe-stream.json").read_bytes())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    status = {"healthy": True, "state": "RUNNING", "runner": "PrismRunner", "uptime_s": 1, "lines_in": 1,
              "lines_out": 1, "sinks": {"events": 1}, "dead_letters": {"x": 1},
              "inputs": [{"name": "spool", "watermark_lag_s": 1, "backlog_bytes": 1}],
              "beam_counters": {"dpipe.late/alarms": 1}}
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(lambda: status))
    exposed = {line.split("{")[0].split(" ")[0] for line in generate_latest(registry).decode().splitlines()
               if line and not line.startswith("#")}
    used = {name for e in exprs for name in re.findall(r"\b(dpipe_[a-z_]+)\b(?![.+])", e)} - {"dpipe_late_"}
    assert used and used <= exposed, used - exposed
    assert any(re.fullmatch(r"dpipe_late_.+_total", name) for name in exposed)
    scrape = yaml.safe_load((root / "prometheus.yml").read_text())
    assert scrape["scrape_configs"][0]["metrics_path"] == "/metrics"
