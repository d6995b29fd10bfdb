"""Flink options are checked when a job starts: each mistake is one line on stderr and exit 2, no traceback."""

from __future__ import annotations

import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipelines import backfill, stream
from pipelines.cluster import FlinkJobOptions, default_job_server_url
from pipelines.options import UsageError, beam_options
from tests.servers import LocalServer

FLINK = ["--runner", "FlinkRunner"]
ON_CLUSTER = [*FLINK, "--flink_master=jobmanager:8081", "--environment_type=EXTERNAL",
              "--environment_config=localhost:50000", "--job_endpoint=jobserver:8099"]


class StaticFiles(LocalServer):
    """Python's own HTTP file server on loopback: a Maven repository stand-in that has what the test puts in it."""

    name = "http.server"

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.url = f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "http.server", str(self.port), "--bind", "127.0.0.1", "--directory",
                str(self.root)]

    def probe(self) -> None:
        urllib.request.urlopen(self.url + "/", timeout=2).close()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StaticFiles]:
    root = tmp_path_factory.mktemp("repo")
    (root / "job-server.jar").write_bytes(b"PK\x03\x04 not really a jar")
    server = StaticFiles(root)
    server.start(tmp_path_factory.mktemp("http") / "http.log")
    yield server
    server.stop()


def one_line_error(capsys: pytest.CaptureFixture[str], code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("dpipe: "), err
    return err


def backfill_error(capsys: pytest.CaptureFixture[str], tmp_path: Path, *beam_args: str) -> str:
    code = backfill.main(["--input", str(tmp_path / "*.log"), "--output", str(tmp_path / "out"), *beam_args])
    return one_line_error(capsys, code)


def stream_error(capsys: pytest.CaptureFixture[str], tmp_path: Path, *args: str) -> str:
    return one_line_error(capsys, stream.main(["--output", str(tmp_path / "out"), *args]))


def test_an_unsupported_flink_version_names_the_supported_ones(capsys, tmp_path: Path) -> None:
    err = backfill_error(capsys, tmp_path, *FLINK, "--flink_version", "1.17")
    assert "--flink_version 1.17" in err and "1.19, 1.20, 2.0, 2.1, 2.2" in err and "cluster's minor" in err
    assert "--flink_version 1.16" in backfill_error(capsys, tmp_path, *FLINK, "--flink_version=1.16")


def test_a_missing_jar_names_the_jar_its_coordinates_and_the_flag(capsys, tmp_path: Path, files) -> None:
    missing = tmp_path / "nope.jar"
    err = backfill_error(capsys, tmp_path, *FLINK, "--flink_version=1.20", f"--flink_job_server_jar={missing}",
                         f"--jar_cache_dir={tmp_path}")
    assert f"{missing} (no such file)" in err and "--flink_job_server_jar" in err
    assert "org.apache.beam:beam-runners-flink-1.20-job-server:2.77.0" in err
    err = backfill_error(capsys, tmp_path, *FLINK, "--flink_version=2.0", f"--jar_cache_dir={tmp_path}",
                         f"--flink_job_server_jar={files.url}/beam-runners-flink-2.0-job-server-2.77.0.jar")
    assert "(HTTP 404)" in err and "org.apache.beam:beam-runners-flink-2.0-job-server:2.77.0" in err


def test_a_reachable_jar_is_accepted(files, tmp_path: Path) -> None:
    beam_options([*FLINK, f"--flink_job_server_jar={files.url}/job-server.jar", f"--jar_cache_dir={tmp_path}"])
    local = files.root / "job-server.jar"
    beam_options([*FLINK, f"--flink_job_server_jar={local}"])
    cached = Path(default_job_server_url("1.19")).name  # the jar Beam downloads, already in its cache
    (tmp_path / cached).write_bytes(b"jar")
    beam_options([*FLINK, "--flink_version=1.19", f"--jar_cache_dir={tmp_path}"])
    beam_options([*FLINK, "--job_endpoint=localhost:8099"])  # a job server runs apart: no jar needed here


def test_workers_a_cluster_cannot_reach_or_that_lack_dpipe_are_refused(capsys, tmp_path: Path) -> None:
    remote = [*FLINK, "--flink_master=jobmanager:8081", "--job_endpoint=jobserver:8099"]
    err = backfill_error(capsys, tmp_path, *remote, "--environment_type=LOOPBACK")
    assert "LOOPBACK" in err and "EXTERNAL" in err
    assert "make sdk-image" in backfill_error(capsys, tmp_path, *remote)  # DOCKER with Beam's image: no dpipe
    assert "--environment_config HOST:PORT" in backfill_error(capsys, tmp_path, *remote, "--environment_type=EXTERNAL")
    beam_options([*remote, "--environment_type=DOCKER", "--environment_config=registry/dpipe-sdk:0.1.0"])
    beam_options(ON_CLUSTER)


def test_a_stream_on_flink_needs_checkpoints_a_spool_source_and_a_shared_spool(capsys, tmp_path: Path) -> None:
    spool = f"--spool={tmp_path / 'spool'}"
    err = stream_error(capsys, tmp_path, "--no_gateway", spool, *ON_CLUSTER, "--checkpointing_interval=1")
    assert "--spool_url s3://" in err and "--spool_shared" in err and "\n" not in err.strip()
    err = stream_error(capsys, tmp_path, "--no_gateway", spool, "--spool_url=bucket/spool", *ON_CLUSTER)
    assert "--spool_url bucket/spool" in err
    spool = f"--spool={tmp_path / 'spool'}", "--spool_shared"
    err = stream_error(capsys, tmp_path, "--no_gateway", *spool, *ON_CLUSTER)
    assert "--checkpointing_interval" in err and "finalizes" in err
    err = stream_error(capsys, tmp_path, "--no_gateway", *spool, *ON_CLUSTER, "--checkpointing_interval=0")
    assert "--checkpointing_interval" in err
    err = stream_error(capsys, tmp_path, "--source", "pubsub", "--subscription", "projects/p/subscriptions/s",
                       *ON_CLUSTER, "--checkpointing_interval=10000")
    assert "--source pubsub does not run on Flink" in err
    err = stream_error(capsys, tmp_path, "--no_gateway", "--spool=spool", "--spool_shared", *ON_CLUSTER,
                       "--checkpointing_interval=1")
    assert "--spool spool" in err and "absolute path" in err


def test_the_flink_runners_own_options_are_known_and_off_flink_nothing_changes() -> None:
    options = beam_options([*ON_CLUSTER, "--checkpointing_interval=10000", "--savepoint_path=s3://sp/1",
                            "--checkpointing_mode=EXACTLY_ONCE", "--externalized_checkpoints_enabled"])
    flink = options.view_as(FlinkJobOptions)
    assert (flink.checkpointing_interval, flink.savepoint_path) == (10000, "s3://sp/1")
    assert "checkpointing_interval" not in beam_options([]).get_all_options(drop_default=True)
    with pytest.raises(UsageError, match="unknown option: --checkpointing_intervall"):
        beam_options(["--checkpointing_intervall=5"])
