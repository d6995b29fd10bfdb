"""The spool behind Beam's filesystems (connectors/spool_store.py): the local directory and an s3:// URL on a
real S3-compatible server (moto's) behave the same for everything the spool reader does, and the reader
reads a spool at a URL and deletes its segments only in finalize."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from connectors.gateway.settings import load_settings
from connectors.gateway.spool import SEGMENTS, list_segments
from connectors.spool_ship import Shipper
from connectors.spool_source import SpoolSource
from connectors.spool_store import PARTIAL, FileSystemsStore, SpoolStore, open_store
from pipelines.options import filesystem_args
from pipelines.validation import ConfigError
from tests.servers.s3 import S3Server
from tests.test_spool_source import als, drain, write_segment
from tests.test_stream import JOB, lines, post, wait_for
from tests.test_stream_stop import payload_ids, procs, run  # noqa: F401 (procs is a fixture)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server()
    server.start(tmp_path_factory.mktemp("moto") / "moto.log")
    server.make_bucket("spool")
    FileSystems.set_options(PipelineOptions(server.beam_options()))
    yield server
    server.stop()


@pytest.fixture(params=["local", "s3"])
def spool(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "spool")
    request.getfixturevalue("s3")
    return f"s3://spool/{tmp_path.name}"


def put_segment(store: SpoolStore, seq: int, category: str, lines: list[bytes]) -> None:
    """A sealed segment as the gateway's shipper leaves it (for a local spool: as the writer seals it)."""
    store.write_atomic(f"{SEGMENTS}/{seq:016d}.{category}.seg", b"".join(line + b"\n" for line in lines))


def test_both_stores_behave_the_same(spool: str) -> None:
    store = open_store(spool)
    assert store.segments() == [] and not store.exists("reader/replay.json")
    with pytest.raises(FileNotFoundError):
        store.read("reader/replay.json")
    put_segment(store, 2, "pv", [b"b", b"c"])
    put_segment(store, 1, "error", [b"a"])
    segments = store.segments()
    assert [(s.seq, s.category, s.sealed) for s in segments] == [(1, "error", True), (2, "pv", True)]
    assert store.read_lines(segments[1], 2, 100) == ([(2, b"c")], 4) and store.size(segments[1]) == 4
    assert store.sealed(segments[0]) == segments[0]
    store.write_atomic("reader/replay.json", b"{}")
    store.replace("reader/replay.json", "reader/positions.json")
    assert store.read("reader/positions.json") == b"{}" and not store.exists("reader/replay.json")
    journal = store.journal("reader/cuts")
    journal.append(b"pv 2 0 2 -1\n")
    journal.append(b"pv 2 2 4 -1\n")
    journal.sync()
    journal.close()
    assert store.journal("reader/cuts").read() == b"pv 2 0 2 -1\npv 2 2 4 -1\n"
    store.journal("reader/cuts").rewrite(b"pv 2 2 4 -1\n")
    assert store.journal("reader/cuts").read() == b"pv 2 2 4 -1\n"
    store.delete_segment(segments[0])
    store.delete_segment(segments[0])  # a missing one is no error
    store.delete("drain")
    assert [s.seq for s in store.segments()] == [2]
    with pytest.raises(FileNotFoundError):
        store.read_lines(segments[0], 0, 100)


def test_the_reader_reads_a_spool_at_a_url_and_deletes_only_in_finalize(spool: str) -> None:
    store = open_store(spool)
    put_segment(store, 0, "pv", [als(1_700_000_000, i) for i in range(5)])
    put_segment(store, 1, "pv", [als(1_700_000_001, i) for i in range(5, 8)])
    reader = SpoolSource(spool, batch_lines=2).create_reader(None, None)
    batches = drain(reader, started=False)
    assert [line for b in batches for line in b.lines] == [als(1_700_000_000, i) for i in range(5)] + [
        als(1_700_000_001, i) for i in range(5, 8)]
    mark = reader.get_checkpoint_mark()
    assert len(store.segments()) == 2, "nothing deleted before the checkpoint is finalized"
    mark.finalize_checkpoint()
    assert store.segments() == [], "sealed segments read wholly are deleted at finalize"
    reader.close()
    again = SpoolSource(spool, batch_lines=2).create_reader(None, mark)
    assert not drain(again, started=False), "nothing is read twice"


def test_the_shipper_retries_keeps_the_local_copy_until_shipped_and_never_lists_a_partial(
        s3: S3Server, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    sealed = write_segment(spool, 0, "pv", [als(1_700_000_000, i) for i in range(3)])
    write_segment(spool, 1, "pv", [als(1_700_000_001, 3)], sealed=False)  # open: never shipped
    shipper = Shipper(spool, "s3://notyet/spool", backoff_s=0.05, max_backoff_s=0.2)  # no such bucket: fails
    shipper.start()
    try:
        wait_for("a failed upload", lambda: shipper.stats()["ship_failures_total"] >= 1, 60)
        assert sealed.exists() and shipper.stats()["ship_backlog"] == 1, "kept until shipped"
        s3.make_bucket("notyet")
        wait_for("the segment shipped", lambda: shipper.stats()["ship_segments_total"] == 1, 60)
        wait_for("the local copy deleted", lambda: not sealed.exists(), 60)
    finally:
        shipper.stop()
    store = FileSystemsStore("s3://notyet/spool")
    assert [(s.seq, s.sealed) for s in store.segments()] == [(0, True)], "the open segment stays here"
    assert store.list("partial") == [], "the partial upload is removed"
    assert store.read(f"{SEGMENTS}/{0:016d}.pv.seg") == b"".join(als(1_700_000_000, i) + b"\n" for i in range(3))
    assert shipper.stats()["ship_bytes_total"] == len(store.read(f"{SEGMENTS}/{0:016d}.pv.seg"))


def test_a_partial_upload_is_never_listed(s3: S3Server, tmp_path: Path) -> None:
    store = FileSystemsStore(f"s3://spool/{tmp_path.name}")
    store.write(f"{PARTIAL}/{0:016d}.pv.seg", b"a\n")
    assert store.segments() == []


def test_the_stream_reads_the_spool_the_gateway_ships_to_s3(s3: S3Server, tmp_path: Path,
                                                            procs: list) -> None:  # noqa: F811
    """End to end on Prism: `pipelines.stream --spool_url s3://...` starts its gateway with the shipper, the
    gateway ships each sealed segment to moto's S3 and deletes its own copy, the reader reads them from S3:
    every acknowledged line is archived once, and S3 keeps only what the reader has not finished with."""
    s3.make_bucket("shipped")
    url = "s3://shipped/live"
    (tmp_path / "job.yaml").write_text(JOB)
    proc, log, port = run(tmp_path, procs, "stream", "--spool_url", url, "--idle_stop", "30", *s3.beam_options())
    sent = []
    for n in range(20):
        body = lines("us", "pv" if n % 2 else "error", 50)
        assert post(port, "pv" if n % 2 else "error", body) == 200
        sent += body
    assert proc.wait(300) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "Traceback" not in text and "gateway: shipper stopped, 0 segments left" in text, text[-3000:]
    assert "Finished listing" not in text  # Beam's root-logger chatter is filtered
    ids = payload_ids(tmp_path / "out")
    assert sorted(ids) == sorted(orjson.loads(line.split(b",", 2)[2])["id"] for line in sent)  # each once
    assert not [s for s in list_segments(tmp_path / "spool") if s.sealed], "shipped segments are deleted here"
    left = FileSystemsStore(url).segments()
    assert len(left) <= 2 and FileSystemsStore(url).list(PARTIAL) == []  # at most each input's last one


def test_the_gateway_takes_the_filesystem_flags_of_beam_args_and_refuses_a_spool_url_that_is_no_url() -> None:
    beam_args = ["--runner", "PrismRunner", "--s3_endpoint_url", "http://x", "--hdfs_port=9870", "--streaming"]
    assert filesystem_args(beam_args) == ["--s3_endpoint_url", "http://x", "--hdfs_port=9870"]
    with pytest.raises(ConfigError, match="spool_url"):
        load_settings(None, spool="/tmp/s", spool_url="bucket/spool")
