"""End to end: the backfill over a generated archive (plain, .gz, live .log), nothing lost, values decoded."""

from __future__ import annotations

import bz2
import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pyarrow.dataset as ds
import pytest
from apache_beam.options.pipeline_options import DirectOptions

import pipelines.backfill as backfill_module
from connectors.archives import _Progress
from pipelines.backfill import run_backfill
from pipelines.config import JobConfig, parse_config
from tests.conftest import PINNED

ROOT = Path(__file__).resolve().parent.parent



def all_lines(logs: Path) -> dict[tuple[str, int], bytes]:
    """Every line of every file, read independently of dpipe: (path, offset) -> line."""
    out = {}
    for path in sorted(logs.iterdir()):
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        elif path.suffix == ".bz2":
            data = bz2.decompress(data)
        pos = 0
        pieces = data.split(b"\n")
        if pieces[-1] == b"":
            pieces.pop()
        for piece in pieces:
            out[(str(path), pos)] = piece
            pos += len(piece) + 1
    return out


def read_outputs(out: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    events = ds.dataset(out / "events", format="parquet", partitioning="hive").to_table().to_pylist()
    dead = [json.loads(line) for f in sorted((out / "deadletter").glob("*.jsonl")) for line in f.open()]
    return events, dead


@pytest.fixture(scope="module")
def backfill(sample: tuple[Path, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory):
    logs, manifest = sample
    out = tmp_path_factory.mktemp("out")
    # small chunks so that plain files are cut into several byte ranges
    job = parse_config({"read": {"chunk_bytes": "256KiB", "block_bytes": "64KiB"}})
    summary = run_backfill([str(logs / "*")], str(out), job, PINNED)
    return logs, manifest, out, summary


def test_summary_matches_the_generators_truth(backfill) -> None:
    _, manifest, out, summary = backfill
    assert summary == json.loads((out / "summary.json").read_text())
    assert summary["lines_read"] == manifest["lines"] == summary["events"] + summary["dead_letters"]
    assert summary["balanced"] is True
    assert summary["events"] == manifest["valid_lines"]
    assert summary["categories"] == manifest["categories"]
    assert summary["dead_letter_reasons"] == manifest["dead_letter_reasons"]
    assert summary["files_read"] == len(manifest["files"])
    assert {f["name"][-3:] for f in manifest["files"]} >= {".gz", "log"}  # plain, gzip and live files were read


def test_every_line_ends_in_exactly_one_place(backfill) -> None:
    logs, _, out, _ = backfill
    events, dead = read_outputs(out)
    truth = all_lines(logs)
    places = [(e["source"], e["offset"]) for e in events] + [(d["source"], d["offset"]) for d in dead]
    assert len(places) == len(set(places)), "a line was written twice"
    assert set(places) == set(truth), "a line was lost"
    for d in dead:
        assert d["raw"] == truth[(d["source"], d["offset"])].decode("utf-8", "backslashreplace")
        assert d["error"] and d["stage"] == "parse"


def test_events_are_decoded_faithfully(backfill) -> None:
    logs, manifest, out, _ = backfill
    events, _ = read_outputs(out)
    truth = all_lines(logs)
    category_of = {f["name"]: f["category"] for f in manifest["files"]}
    for e in events:
        area, ts, payload = truth[(e["source"], e["offset"])].rstrip(b"\r").split(b",", 2)
        ts_ms = int(ts) if int(ts) > 1283931748344 else int(ts) * 1000
        assert e["area"] == area.decode()
        assert int(e["ts"].timestamp() * 1000) == ts_ms
        assert orjson.loads(e["payload"]) == orjson.loads(payload)
        assert e["ts"].year == 2014  # historical timestamps stay historical
        assert str(e["date"]) == e["ts"].strftime("%Y-%m-%d")  # the date partition is the UTC event date
        assert e["category"] == category_of[Path(e["source"]).name]


def test_rerun_into_the_same_output_replaces_rather_than_duplicates(backfill) -> None:
    logs, _, out, summary = backfill
    before = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    job = parse_config({"read": {"chunk_bytes": "256KiB", "block_bytes": "64KiB"}})
    again = run_backfill([str(logs / "*")], str(out), job, PINNED)
    after = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert after == before
    assert again == summary
    assert len(read_outputs(out)[0]) == summary["events"]
    assert not (out / ".dpipe-tmp").exists() or not any((out / ".dpipe-tmp").iterdir())


def test_time_bounds_from_config(sample, tmp_path: Path) -> None:
    logs, manifest = sample
    job = parse_config({"parse": {"max_age": "1d"}})  # relative to now: every 2014 line is too old
    summary = run_backfill([str(logs / "*")], str(tmp_path), job, PINNED)
    assert summary["events"] == 0 and summary["dead_letters"] == manifest["lines"]
    # timestamps are checked before payloads, so lines with a bad payload are too old as well
    assert summary["dead_letter_reasons"]["timestamp too old"] >= manifest["valid_lines"]
    assert summary["balanced"]


def test_glob_matching_nothing_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.backfill", "--input", str(tmp_path / "nothing-*.log"),
         "--output", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 2
    assert "nothing-*.log: no file matches this pattern" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_option_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "pv.0.log").write_text("us,1389913256,{}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.backfill", "--input", str(tmp_path / "*.log"),
         "--output", str(tmp_path / "out"), "--ouptut_dir", "x"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 2
    assert "unknown option: --ouptut_dir" in proc.stderr


def test_progress_is_logged(capsys: pytest.CaptureFixture) -> None:
    progress = _Progress(every=0)
    progress.log.handlers[0].setStream(sys.stderr)  # the stream pytest captures now
    progress.add(1500, 3_000_000)
    err = capsys.readouterr().err
    assert "dpipe progress" in err and "1,500 lines" in err


@pytest.mark.integration
def test_cli_with_two_worker_processes_gives_the_same_result(backfill, tmp_path: Path) -> None:
    logs, _, out, summary = backfill
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.backfill", "--input", str(logs / "*"), "--output", str(tmp_path),
         "--workers", "2", *PINNED],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "every line is accounted for" in proc.stdout
    two = json.loads((tmp_path / "summary.json").read_text())
    for key in ("lines_read", "events", "dead_letters", "categories", "dead_letter_reasons", "bytes_read"):
        assert two[key] == summary[key]
    events, dead = read_outputs(tmp_path)
    assert sorted((e["source"], e["offset"]) for e in events) == sorted(
        (e["source"], e["offset"]) for e in read_outputs(out)[0]
    )
    assert len(dead) == summary["dead_letters"]


def test_defaults_need_no_config() -> None:
    assert JobConfig().archive.compression == "zstd"


LINE = b"us,1389913256,{}\n"


@pytest.mark.parametrize(("contents", "workers"), [([b""], 1), ([LINE], 1), ([LINE, LINE], 2)])
def test_a_second_worker_is_started_only_when_there_is_a_second_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, contents: list[bytes], workers: int
) -> None:
    for n, content in enumerate(contents):
        (tmp_path / f"pv_{n}.log").write_bytes(content)  # an empty file has no range at all
    started: list[int] = []

    def run_once(inputs: list[str], output: str, job: JobConfig, options: Any, path: Any) -> dict:
        started.append(options.view_as(DirectOptions).direct_num_workers)
        return {}

    monkeypatch.setattr(backfill_module, "_run_once", run_once)
    run_backfill([str(tmp_path / "*.log")], str(tmp_path / "out"), JobConfig(), PINNED, workers=2)
    assert started == [workers]
