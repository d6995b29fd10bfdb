"""The backfill's progress bar: the rendering, the workers' files, and a real backfill on a pseudo-terminal
(the bar, ending at 100%) against the same backfill into a pipe (no bar: logs and CI keep plain lines)."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from connectors.progress import ProgressFiles, progress_line, read_progress

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def test_the_line_shows_the_fraction_rate_and_eta() -> None:
    line = progress_line(50_000_000, 200_000_000, 100_000, 10.0, width=20)
    assert line == "[#####...............]  25%  50.0/200.0 MB  10,000 lines/s  ETA 0:30"
    assert progress_line(0, 0, 0, 0.0, width=4) == "[....]   0%  0.0/0.0 MB  0 lines/s  ETA --:--"
    assert "100%" in progress_line(210, 200, 5, 1.0) and "ETA 0:00" in progress_line(210, 200, 5, 1.0)


def test_workers_files_add_up(tmp_path: Path) -> None:
    a, b = ProgressFiles(str(tmp_path), every=3600), ProgressFiles(str(tmp_path), every=3600)
    a.add(100, 10)
    b.add(50, 5)
    assert read_progress(str(tmp_path)) == (0, 0)  # not flushed yet
    a.flush()
    b.flush()
    b.add(25, 1)
    b.flush()
    assert read_progress(str(tmp_path)) == (175, 16)


def backfill(logs: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "pipelines.backfill", "--input", str(logs / "*"), "--output", str(out)]


@pytest.mark.integration
def test_a_backfill_on_a_terminal_draws_the_bar_and_in_a_pipe_does_not(sample, tmp_path: Path) -> None:
    logs, _ = sample
    master, slave = pty.openpty()
    proc = subprocess.Popen(backfill(logs, tmp_path / "tty"), cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=slave)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal: it has exited
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    assert proc.wait(300) == 0, seen.decode(errors="replace")[-2000:]
    text = seen.decode(errors="replace")
    assert "\r[" in text and "lines/s  ETA" in text, text[-2000:]
    drawings = [part for part in text.split("\r") if part.startswith("[")]
    assert "100%" in drawings[-1], "the last drawing is the whole input"

    piped = subprocess.run(backfill(logs, tmp_path / "pipe"), cwd=ROOT, env=ENV, capture_output=True, timeout=300)
    assert piped.returncode == 0
    assert b"lines/s  ETA" not in piped.stderr
