"""Both entry points in a Flink cluster's shape: the SDK workers in a worker pool started apart (as a
TaskManager's sidecar), reached with `--environment_type=EXTERNAL`, getting the job's options from the runner.

The runner is Prism here (no Flink job server jar is reachable from this machine). With
DPIPE_FLINK_JOB_SERVER_JAR and DPIPE_FLINK_MASTER set, the same tests also run on that Flink cluster
(runbooks/flink.md, "The opt-in test"); they are skipped otherwise, the one documented exception.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow.dataset as ds
import pytest

from pipelines.backfill import run_backfill
from pipelines.config import load_config
from tests.conftest import PINNED
from tests.servers.prism import PrismServer
from tests.servers.s3 import S3Server
from tests.servers.worker_pool import WorkerPool
from tests.test_s3 import SAME, events_of
from tests.test_stream import check_killed_gateway_case
from tests.test_stream import stopped as stopped  # the fixture, shared

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
ENGINE = ROOT / "templates" / "jobs" / "engine.als.yaml"
FLINK_JAR, FLINK_MASTER = os.environ.get("DPIPE_FLINK_JOB_SERVER_JAR"), os.environ.get("DPIPE_FLINK_MASTER")
ON_FLINK = pytest.mark.skipif(not (FLINK_JAR and FLINK_MASTER), reason="opt-in: set DPIPE_FLINK_JOB_SERVER_JAR and "
                              "DPIPE_FLINK_MASTER (runbooks/flink.md)")
SINKS = ("alarms", "counters", "stats", "cardinality", "funnels")


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WorkerPool, Path]]:
    log = tmp_path_factory.mktemp("pool") / "pool.log"
    server = WorkerPool()
    server.start(log)
    yield server, log
    server.stop()


@pytest.fixture(scope="module", params=["prism", pytest.param("flink", marks=ON_FLINK)])
def cluster(request: pytest.FixtureRequest, pool) -> Iterator[list[str]]:
    """Beam options of a runner whose SDK workers are the pool's: Prism here, or the opt-in Flink cluster."""
    server, _ = pool
    if request.param == "flink":
        workers = os.environ.get("DPIPE_FLINK_ENVIRONMENT_CONFIG")  # the cluster's own sidecars, if not this host
        environment = (("--environment_type=EXTERNAL", f"--environment_config={workers}") if workers
                       else server.beam_options())
        yield ["--runner=FlinkRunner", f"--flink_master={FLINK_MASTER}", f"--flink_job_server_jar={FLINK_JAR}",
               f"--flink_version={os.environ.get('DPIPE_FLINK_VERSION', '1.20')}", *environment]
        return
    prism: PrismServer = request.getfixturevalue("prism")  # tests/conftest.py's, owned by this module
    yield prism.options(server.beam_options())


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server()
    server.start(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def local_run(sample, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """The reference: the same backfill on the FnApiRunner, in this process."""
    logs, _ = sample
    out = tmp_path_factory.mktemp("local")
    return run_backfill([str(logs / "*")], str(out), load_config(ENGINE), PINNED), out


def results(out: Path) -> dict[str, Any]:
    """What a backfill wrote, comparable across runners: events, dead letters and every analysis' rows.

    A cardinality row's serialized sketch depends on the order partial sketches were merged in (its estimate
    does not), so it is left out."""
    events = events_of(ds.dataset(out / "events", format="parquet", partitioning="hive").to_table())

    def rows(sink: str) -> list[bytes]:
        found = (orjson.loads(line) for f in (out / sink).rglob("*.jsonl") for line in f.read_bytes().splitlines())
        return sorted(orjson.dumps({k: v for k, v in row.items() if k != "sketch"}, option=orjson.OPT_SORT_KEYS)
                      for row in found)

    return {"events": events, **{sink: rows(sink) for sink in (*SINKS, "deadletter")}}


def test_backfill_on_external_workers_equals_the_local_run(sample, local_run, cluster, pool, tmp_path: Path) -> None:
    logs, _ = sample
    server, log = pool
    started = server.workers_started(log)
    summary = run_backfill([str(logs / "*")], str(tmp_path / "out"), load_config(ENGINE), cluster)
    local, local_out = local_run
    assert summary["balanced"] and {k: summary[k] for k in SAME} == {k: local[k] for k in SAME}
    assert results(tmp_path / "out") == results(local_out)
    assert server.workers_started(log) > started, "the job's SDK workers ran in the pool, not in this process"


def test_s3_options_reach_the_external_workers(sample, local_run, cluster, pool, s3: S3Server) -> None:
    """The pool's environment has no S3 settings: the workers read and write moto only through the job's."""
    logs, _ = sample
    bucket = cluster[0].split("=")[1].lower()  # one per runner: the opt-in Flink case shares this server
    s3.make_bucket(bucket)
    s3.upload_dir(logs, bucket, "archive")
    job = load_config(ENGINE)
    summary = run_backfill([f"s3://{bucket}/archive/*"], f"s3://{bucket}/ext", job, cluster + s3.beam_options())
    local, _ = local_run
    assert {k: summary[k] for k in SAME} == {k: local[k] for k in SAME}
    keys = [o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket, Prefix="ext/")["Contents"]]
    written = orjson.loads(s3.client().get_object(Bucket=bucket, Key="ext/summary.json")["Body"].read())
    assert written["events"] == local["events"]
    assert sum(k.endswith(".parquet") for k in keys if k.startswith("ext/events/")) == local["files"]["events"]


def test_stream_on_external_workers_survives_a_killed_gateway(cluster, pool, tmp_path: Path, stopped) -> None:
    server, log = pool
    started = server.workers_started(log)
    check_killed_gateway_case(tmp_path, stopped, [*cluster, "--checkpointing_interval=2000"])
    assert server.workers_started(log) > started, "the stream's SDK workers ran in the pool"
