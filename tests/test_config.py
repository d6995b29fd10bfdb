"""Job config: the template loads, and every kind of mistake names the file, the key path and the expectation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.config import ConfigError, JobConfig, load_config

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_without_a_file() -> None:
    job = load_config(None)
    assert job == JobConfig()
    assert job.parse.max_age is None and job.read.chunk_bytes == 16 * 2**20


def test_every_job_template_is_valid() -> None:
    templates = sorted((ROOT / "templates" / "jobs").glob("*.yaml"))
    assert templates
    for path in templates:
        load_config(path)


def test_units(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("parse: {max_age: 7d, max_future: 90}\nread: {chunk_bytes: 8MiB, block_bytes: 512KB}\n")
    job = load_config(path)
    assert job.parse.max_age == 7 * 86400 and job.parse.max_future == 90
    assert job.read.chunk_bytes == 8 * 2**20 and job.read.block_bytes == 512_000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("parse:\n  max_age: soon\n", r"job\.yaml: parse\.max_age: expected a duration such as 90s.*got 'soon'"),
        ("parse:\n  max_agee: 7d\n", r"job\.yaml: parse\.max_agee: unknown key; expected one of: max_age, max_future"),
        ("prase: {}\n", r"job\.yaml: prase: unknown key; expected one of: name, parse, read, archive, index, decorate"),
        ("read:\n  chunk_bytes: -5\n", r"job\.yaml: read\.chunk_bytes: expected a positive size"),
        ("read:\n  chunk_bytes: 0MiB\n", r"job\.yaml: read\.chunk_bytes: expected a positive size"),
        ("archive:\n  compression: lzma\n", r"job\.yaml: archive\.compression: Input should be 'zstd'"),
        ("parse: 5\n", r"job\.yaml: parse: .*got 5"),
        ("- a\n- b\n", r"job\.yaml: expected a mapping of sections \(name, parse, read, .*\), got list"),
        ("parse:\n  max_age: [1\n", r"job\.yaml:\d+:\d+: invalid YAML"),
        ("name: ''\n", r"job\.yaml: name: String should have at least 1 character"),
    ],
)
def test_mistakes_are_explained(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such config file"):
        load_config(tmp_path / "nope.yaml")


def test_cli_reports_config_errors_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "job.yaml"
    bad.write_text("read:\n  chunk_bytes: lots\n")
    (tmp_path / "pv.0.log").write_text("us,1389913256,{}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.backfill", "--config", str(bad),
         "--input", str(tmp_path / "*.log"), "--output", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert proc.returncode == 2
    assert f"dpipe: {bad}: read.chunk_bytes: expected a positive size" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
