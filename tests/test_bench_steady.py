"""Smoke test of `bench.stream --steady`: a few seconds of low-rate live traffic must yield an alarm latency
and result rows. Values are not asserted: wall-clock numbers depend on the machine's load."""

from __future__ import annotations

import re

import pytest

from bench import stream
from bench.steady import spike_body, spike_word

pytestmark = pytest.mark.integration


def test_spike_words_are_distinct_letters() -> None:
    """Each spike is its own message shape (the normalizer keeps letters, and a key's cooldown would silence
    a repeated one)."""
    words = [spike_word(n) for n in range(500)]
    assert len(set(words)) == 500 and all(w.isalpha() for w in words)
    assert spike_body(0, 1.7e9).count(b"\n") == 149


def test_steady_mode_reports_alarm_latency_and_results(capsys: pytest.CaptureFixture[str]) -> None:
    assert stream.main(["--steady", "--rate", "2000", "--seconds", "12", "--spike_every", "3",
                        "--config", "templates/jobs/engine.als.yaml"]) == 0
    out = capsys.readouterr().out
    found = re.search(r"BENCH alarm_latencies=(\d+) result_rows=(\d+)", out)
    assert found, out
    assert int(found.group(1)) >= 1, out
    assert int(found.group(2)) >= 1, out
    assert "| alarm: crossing POST acked -> webhook" in out and "unread backlog" in out and "spool size" in out
