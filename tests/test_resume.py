"""Resumable backfills: a backfill killed between waves and resumed with --skip_done equals an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pipelines.backfill import run_backfill
from pipelines.config import parse_config
from pipelines.resume import InputFile, WaveRecord, plan_waves, read_records, total_summary, undone
from tests.conftest import PINNED
from tests.test_backfill import ROOT, read_outputs

WAVE_MB = 1
CORE = ("lines_read", "bytes_read", "files_read", "events", "dead_letters", "categories", "dead_letter_reasons")


def f(name: str, size: int) -> InputFile:
    return InputFile(name, size, 1.0)


def test_waves_are_consecutive_files_of_about_the_wave_size() -> None:
    files = [f("a", 4), f("b", 4), f("c", 9), f("d", 1), f("e", 1)]
    assert [[x.path for x in w] for w in plan_waves(files, 8)] == [["a", "b"], ["c"], ["d", "e"]]
    assert list(plan_waves([], 8)) == []


def test_a_file_counts_as_done_only_unchanged() -> None:
    record = WaveRecord("wave-1", [f("a", 4), f("b", 4)], {})
    grown = InputFile("b", 5, 1.0)  # the live file grew since: do it again
    assert undone([f("a", 4), grown, f("c", 1)], [record]) == [grown, f("c", 1)]


def test_the_total_summary_sums_the_waves_and_checks_the_balance_again() -> None:
    one = {"lines_read": 3, "events": 2, "dead_letters": 1, "categories": {"x": 2}, "balanced": True}
    two = {"lines_read": 5, "events": 5, "dead_letters": 0, "categories": {"x": 1, "y": 4}, "balanced": True}
    total = total_summary([WaveRecord("w1", [], one), WaveRecord("w2", [], two)])
    assert (total["lines_read"], total["events"], total["dead_letters"]) == (8, 7, 1)
    assert total["categories"] == {"x": 3, "y": 4} and total["balanced"] is True


def places(out: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    events, dead = read_outputs(out)
    return (sorted((e["_id"], e["source"], e["offset"], e["category"], e["date"]) for e in events),
            sorted((d["source"], d["offset"], d["error"]) for d in dead))


def wait_for_first_record(proc: subprocess.Popen[bytes], done: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list(done.glob("wave-*.json")):
            return
        assert proc.poll() is None, "the backfill ended before it could be stopped"
        time.sleep(0.05)
    raise AssertionError("no wave finished in time")


@pytest.mark.integration
def test_a_stopped_backfill_resumes_to_exactly_the_uninterrupted_result(sample, tmp_path: Path) -> None:
    logs, _ = sample
    job = parse_config({"read": {"chunk_bytes": "256KiB"}})
    whole = run_backfill([str(logs / "*")], str(tmp_path / "whole"), job, PINNED)

    out = tmp_path / "resumed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.backfill", "--input", str(logs / "*"), "--output", str(out),
         "--skip_done", "--wave_mb", str(WAVE_MB), *PINNED],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        wait_for_first_record(proc, out / "_done")
    finally:
        proc.send_signal(signal.SIGKILL)  # as hard as a stop gets: no clean-up of any kind
        proc.wait()
    stopped = read_records(str(out))
    total_files = len([p for p in logs.iterdir() if p.stat().st_size])
    assert 1 <= sum(len(r.files) for r in stopped) < total_files, "the stop must land midway"

    resumed = run_backfill([str(logs / "*")], str(out), job, PINNED, skip_done=True, wave_bytes=WAVE_MB << 20)
    assert {k: resumed[k] for k in CORE} == {k: whole[k] for k in CORE}
    assert resumed["balanced"] is True
    assert places(out) == places(tmp_path / "whole"), "events or dead letters differ from the uninterrupted run"
    records = read_records(str(out))
    assert [r.wave for r in records if r.wave in {s.wave for s in stopped}] == [s.wave for s in stopped]
    assert sum(len(r.files) for r in records) == total_files, "each file in exactly one wave"

    again = run_backfill([str(logs / "*")], str(out), job, PINNED, skip_done=True, wave_bytes=WAVE_MB << 20)
    assert again == resumed and len(read_records(str(out))) == len(records), "nothing left to do"
