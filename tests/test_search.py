"""The bulk sink against a real OpenSearch (started from Maven Central artifacts), through opensearch-py and,
through a test-only compatibility shim, through the official elasticsearch 9 client; faults included.

Set DPIPE_TEST_ES_URL to run the same assertions against a real Elasticsearch as well.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipelines.backfill import run_backfill
from pipelines.config import JobConfig, parse_config
from tests.conftest import PINNED
from tests.servers.es_compat_proxy import start_proxy
from tests.servers.opensearch import OpenSearchServer

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent



@pytest.fixture(scope="module")
def opensearch(tmp_path_factory: pytest.TempPathFactory):
    server = OpenSearchServer()
    server.start(tmp_path_factory.mktemp("opensearch"))
    yield server
    server.stop()


def job_for(url: str, client: str, prefix: str, counters: bool = True, **es: Any) -> JobConfig:
    data = yaml.safe_load((ROOT / "templates" / "jobs" / "engine.als.yaml").read_text())
    data["index"]["prefix"] = prefix
    if not counters:  # only the routed events: no derived documents (counters, issues)
        data["counters"] = data["issues"] = []
    data["elasticsearch"] = {"routes": ["indexed"], "client": client, "hosts": [url],
                             "retry": {"initial_backoff": "100ms", "max_backoff": "2s"}, **es}
    return parse_config(data)


def get(url: str, path: str) -> Any:
    import urllib.request

    with urllib.request.urlopen(url + path, timeout=30) as r:
        return json.loads(r.read())


def put(url: str, path: str, body: Any) -> Any:
    import urllib.request

    req = urllib.request.Request(url + path, json.dumps(body).encode(), method="PUT",
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def count(url: str, pattern: str) -> int:
    get(url, f"/{pattern}/_refresh")
    return get(url, f"/{pattern}/_count")["count"]


def dead_letters(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for f in (out / "deadletter").glob("*.jsonl") for line in f.open()]


def check_backfill_indexes_every_routed_event_once(sample, tmp_path: Path, url: str, write_url: str,
                                                   client: str, prefix: str) -> None:
    """The shared assertions: every routed event, counter document and issue is in the cluster exactly once,
    and a second run of the same backfill adds nothing."""
    logs, manifest = sample
    job = job_for(write_url, client, prefix)
    summary = run_backfill([str(logs / "*")], str(tmp_path / "a"), job, PINNED, install_templates=True)
    expected = summary["routes"]["indexed"] + summary["counters"] + summary["issues"]
    assert summary["index"] == {"indexed": expected, "duplicates": 0, "rejected": 0, "retried": 0}
    assert count(url, f"{prefix}_*") == expected  # documents by id: none lost, none twice
    template = get(url, f"/_index_template/dpipe-{prefix}-events")["index_templates"][0]["index_template"]
    assert template["index_patterns"] == [f"{prefix}_*"]
    mapping = get(url, f"/{prefix}_2014_01/_mapping")[f"{prefix}_2014_01"]["mappings"]["properties"]
    assert mapping["_geo"]["type"] == "geo_point" and mapping["_t"]["type"] == "date"
    assert "script_id" not in mapping["_log_info"]["properties"]  # the route's drop
    again = run_backfill([str(logs / "*")], str(tmp_path / "b"), job, PINNED)
    assert again["index"]["indexed"] == expected and count(url, f"{prefix}_*") == expected
    assert summary["balanced"] and summary["events"] == manifest["valid_lines"]


def test_opensearch_py(opensearch: OpenSearchServer, sample, tmp_path: Path) -> None:
    check_backfill_indexes_every_routed_event_once(sample, tmp_path, opensearch.url, opensearch.url,
                                                   "opensearch", "os")


def test_elasticsearch_client_through_the_test_shim(opensearch: OpenSearchServer, sample, tmp_path: Path) -> None:
    proxy, stop = start_proxy(opensearch.url)
    try:
        check_backfill_indexes_every_routed_event_once(sample, tmp_path, opensearch.url, proxy,
                                                       "elasticsearch", "es")
    finally:
        stop()


@pytest.mark.skipif(not os.environ.get("DPIPE_TEST_ES_URL"), reason="opt-in: set DPIPE_TEST_ES_URL to a real ES")
def test_real_elasticsearch(sample, tmp_path: Path) -> None:
    url = os.environ["DPIPE_TEST_ES_URL"].rstrip("/")
    check_backfill_indexes_every_routed_event_once(sample, tmp_path, url, url, "elasticsearch", "real")


def small_archive(tmp_path: Path, lines: list[str]) -> Path:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "pv.0.log").write_text("".join(line + "\n" for line in lines))
    return logs


def test_mapping_conflicts_go_to_dead_letters_with_the_servers_reason(opensearch: OpenSearchServer,
                                                                      tmp_path: Path) -> None:
    put(opensearch.url, "/mc_2014_01", {"mappings": {"properties": {"_log_info": {"properties": {
        "uid": {"type": "long"}}}}}})
    lines = [f'us,{1389913256000 + i},{{"_log_info":{{"uid":{i}}}}}' for i in range(50)]
    lines[7] = 'us,1389913256007,{"_log_info":{"uid":"not a number"}}'
    logs = small_archive(tmp_path, lines)
    job = job_for(opensearch.url, "opensearch", "mc", counters=False)
    summary = run_backfill([str(logs / "*")], str(tmp_path / "out"), job, PINNED)
    assert summary["index"]["indexed"] == 49 and summary["index"]["rejected"] == 1
    assert summary["sink_failures"] == {"index": 1} and summary["balanced"] and summary["events"] == 50
    [dead] = dead_letters(tmp_path / "out")
    assert dead["stage"] == "index" and dead["target"] == "mc_2014_01" and dead["error"] == "index rejected: 400"
    assert "mapper_parsing_exception" in dead["detail"] and dead["raw"] == lines[7]
    assert count(opensearch.url, "mc_*") == 49


def test_429s_are_retried_until_the_cluster_accepts(opensearch: OpenSearchServer, tmp_path: Path) -> None:
    # a read-only-allow-delete block answers every write with a real 429; it is lifted once the proxy in
    # front of the cluster has seen the first one, so the retries are exercised however loaded the machine
    put(opensearch.url, "/ro_2014_01", {"settings": {"index.blocks.read_only_allow_delete": True}})
    lines = [f'us,{1389913256000 + i},{{"n":{i}}}' for i in range(200)]
    logs = small_archive(tmp_path, lines)
    first_429 = threading.Event()

    def observe(method: str, path: str, status: int, body: bytes) -> None:
        if "_bulk" in path and (status == 429 or b'"status":429' in body):
            first_429.set()

    def lift() -> None:
        if first_429.wait(120):
            put(opensearch.url, "/ro_2014_01/_settings", {"index.blocks.read_only_allow_delete": None})

    proxy, stop = start_proxy(opensearch.url, observe)
    lifter = threading.Thread(target=lift)
    lifter.start()
    retry = {"max_retries": 30, "initial_backoff": "200ms", "max_backoff": "1s"}
    job = job_for(proxy, "opensearch", "ro", counters=False, retry=retry)
    try:
        summary = run_backfill([str(logs / "*")], str(tmp_path / "out"), job, PINNED)
    finally:
        first_429.set()
        lifter.join()
        stop()
    assert summary["index"]["indexed"] == 200 and summary["index"]["rejected"] == 0
    assert summary["index"]["retried"] >= 200  # every document was refused at least once
    assert count(opensearch.url, "ro_*") == 200


def test_an_unreachable_cluster_is_retried_then_dead_lettered_without_hanging(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logs = small_archive(tmp_path, [f'us,{1389913256000 + i},{{"n":{i}}}' for i in range(20)])
    job = job_for(f"http://127.0.0.1:{port}", "opensearch", "down", counters=False,
                  retry={"max_retries": 3, "initial_backoff": "50ms", "max_backoff": "100ms"})
    summary = run_backfill([str(logs / "*")], str(tmp_path / "out"), job, PINNED)  # returns: bounded retries
    assert summary["index"]["rejected"] == 20 and summary["index"]["indexed"] == 0
    assert summary["events"] == 20 and summary["balanced"]
    assert {d["error"] for d in dead_letters(tmp_path / "out")} == {"index unreachable"}


def test_a_server_stopped_mid_run_and_restarted_loses_and_duplicates_nothing(sample, tmp_path: Path) -> None:
    logs, _ = sample
    server = OpenSearchServer()
    server.start(tmp_path / "node")
    port, url = server.port, server.url
    try:
        # up to about 4 minutes of retries: longer than a restart takes on a loaded machine
        job = job_for(url, "opensearch", "rs", counters=False, batch={"docs": 100},
                      retry={"max_retries": 50, "initial_backoff": "200ms", "max_backoff": "5s"})
        result: dict[str, Any] = {}
        run = threading.Thread(target=lambda: result.update(
            run_backfill([str(logs / "*")], str(tmp_path / "out"), job, PINNED)))
        run.start()
        while not server_has_documents(url, "rs_*") and run.is_alive():
            threading.Event().wait(0.05)
        server.stop()  # mid-run: the first documents are in, most are not; returns once the process is gone
        server.start(tmp_path / "node", http_port=port)
        run.join()
        assert result["index"]["retried"] > 0 and result["index"]["rejected"] == 0
        assert result["index"]["indexed"] == result["routes"]["indexed"]
        assert count(url, "rs_*") == result["routes"]["indexed"]  # by id: nothing lost, nothing twice
    finally:
        server.stop()


def server_has_documents(url: str, pattern: str) -> bool:
    try:
        return count(url, pattern) > 0
    except Exception:  # no index yet
        return False


def test_data_stream_mode(opensearch: OpenSearchServer, tmp_path: Path) -> None:
    lines = [f'us,{1389913256000 + i},{{"n":{i}}}' for i in range(30)]
    logs = small_archive(tmp_path, lines)
    job = job_for(opensearch.url, "opensearch", "dsx", counters=False, data_stream="dsx-events")
    summary = run_backfill([str(logs / "*")], str(tmp_path / "out"), job, PINNED, install_templates=True)
    assert summary["index"]["indexed"] == 30
    streams = get(opensearch.url, "/_data_stream/dsx-events")["data_streams"]
    assert [s["name"] for s in streams] == ["dsx-events"]
    assert count(opensearch.url, "dsx-events") == 30
    again = run_backfill([str(logs / "*")], str(tmp_path / "again"), job, PINNED)
    assert again["index"] == {"indexed": 0, "duplicates": 30, "rejected": 0, "retried": 0}  # create: 409s
    assert count(opensearch.url, "dsx-events") == 30
