"""Backfills from and to HDFS (Hadoop's mini cluster from Maven Central, WebHDFS on loopback) give what local
disk gives."""

from __future__ import annotations

import io
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from pipelines.backfill import run_backfill
from pipelines.config import load_config
from tests.conftest import PINNED
from tests.servers.hdfs import HdfsServer
from tests.test_resume import CORE
from tests.test_s3 import SAME, events_of

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def hdfs(tmp_path_factory: pytest.TempPathFactory):
    server = HdfsServer()
    server.start(tmp_path_factory.mktemp("hdfs"))
    yield server
    server.stop()


def test_backfill_from_hdfs_to_hdfs_equals_the_local_run(hdfs: HdfsServer, sample, tmp_path: Path) -> None:
    logs, _ = sample
    client = hdfs.client()
    client.makedirs("/archive/rs")
    for path in sorted(logs.iterdir()):
        client.upload(f"/archive/rs/{path.name}", str(path))
    client.upload(f"/archive/rs/older/{path.name}", str(path))  # `*` lists this folder too: it is no file
    job = load_config(ROOT / "templates" / "jobs" / "engine.als.yaml")
    local = run_backfill([str(logs / "*")], str(tmp_path / "local"), job, PINNED)
    remote = run_backfill([hdfs.beam_path("/archive/rs/*")], hdfs.beam_path("/results/run1"), job,
                          PINNED + hdfs.beam_options())
    assert remote["balanced"] and {k: remote[k] for k in SAME} == {k: local[k] for k in SAME}

    written = [f"{folder}/{name}" for folder, _, files in client.walk("/results/run1") for name in files]
    assert "/results/run1/summary.json" in written and not [p for p in written if ".dpipe-tmp" in p]
    remote_events = []
    for path in (p for p in written if p.startswith("/results/run1/events/") and p.endswith(".parquet")):
        with client.read(path) as reader:
            table = pq.read_table(io.BytesIO(reader.read()))
        category = path.split("category=")[1].split("/")[0]
        remote_events += [(category, r["_id"], r["payload"], str(r["ts"])) for r in table.to_pylist()]
    local_events = events_of(ds.dataset(tmp_path / "local" / "events", format="parquet",
                                        partitioning="hive").to_table())
    assert sorted(remote_events) == local_events

    waves = run_backfill([hdfs.beam_path("/archive/rs/*")], hdfs.beam_path("/results/run2"), job,
                         PINNED + hdfs.beam_options(), skip_done=True, wave_bytes=1 << 20)
    assert {k: waves[k] for k in CORE} == {k: local[k] for k in CORE}
    assert len(client.list("/results/run2/_done")) > 1, "the resumable run records its waves on HDFS"
