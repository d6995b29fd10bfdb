"""One user-error hierarchy: every entry point turns a config, usage or input mistake into one line on
stderr, `dpipe: ...`, and exit 2, never a traceback; the same mistake in the job config reads the same from
every command that loads it (the gateway's settings go through the pipeline's loader)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from connectors.archives import InputError
from connectors.dashboard.render import MissingChartLibrary
from pipelines import backfill, collect, dashboard, funnel, gateway, stream
from pipelines.validation import ConfigError, UsageError, UserError

BAD_SIZE = ("gateway.max_body_bytes: expected a positive size such as 64MiB, 512KB or a number of bytes; "
            "got '16 megs'")


def test_every_user_mistake_is_a_user_error() -> None:
    for kind in (ConfigError, UsageError, InputError, MissingChartLibrary):
        assert issubclass(kind, UserError), kind


@pytest.mark.parametrize(("main", "argv"), [
    (gateway.main, ["--spool", "{tmp}/spool", "--port", "0"]),
    (stream.main, ["--output", "{tmp}/out"]),
    (backfill.main, ["--input", "{tmp}/logs/*", "--output", "{tmp}/out"]),
    (funnel.main, ["--input", "{tmp}/out", "--from", "2014-01-17", "--to", "2014-01-18"]),
], ids=["gateway", "stream", "backfill", "funnel"])
def test_a_bad_job_config_is_the_same_one_line_from_every_command(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], main: Callable[[list[str]], int], argv: list[str]) -> None:
    config = tmp_path / "job.yaml"
    config.write_text("gateway:\n  max_body_bytes: 16 megs\n")
    assert main([*(a.format(tmp=tmp_path) for a in argv), "--config", str(config)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"dpipe: {config}: {BAD_SIZE}"]


@pytest.mark.parametrize(("main", "argv", "expected"), [
    (collect.main, ["--config", "{tmp}/collector.yaml"], "dpipe: {tmp}/collector.yaml: sources: Field required"),
    (dashboard.main, ["--output", "{tmp}/nowhere"], "dpipe: --output {tmp}/nowhere: no such folder"),
    (stream.main, ["--output", "{tmp}/out", "--config", "{tmp}/missing.yaml"],
     "dpipe: {tmp}/missing.yaml: no such config file"),
], ids=["collect", "dashboard", "stream-missing-config"])
def test_other_mistakes_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                main: Callable[[list[str]], int], argv: list[str],
                                                expected: str) -> None:
    (tmp_path / "collector.yaml").write_text("gateways: {urls: [http://127.0.0.1:1]}\ncheckpoints: {path: cp}\n")
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected.format(tmp=tmp_path)), lines
