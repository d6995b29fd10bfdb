"""A clean stop of `pipelines.stream` under load: SIGTERM, then Ctrl-C to its whole process group. Each stop
exits 0 with one line per step and no traceback; each restart goes on where the stop left off, so at the end
every acknowledged line is archived exactly once. A dead runner is one line and exit 1."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from tests.test_stream import ENV, JOB, ROOT, archived, lines, post, wait_for

pytestmark = pytest.mark.integration
PORT = re.compile(rb"gateway on http://127.0.0.1:(\d+)")


class Collector(threading.Thread):
    """Posts batches until told to stop; a batch counts as acknowledged only on a 200, and is retried (to
    whichever gateway is up) until it gets one. `body(n)` makes the n-th batch; `keyed`: each batch has an
    Idempotency-Key, so a retry after a gateway crash is never written twice. `per_second`: at most that
    many batches a second (a steady load, and a volume the final checks read in seconds; unpaced, a
    2-minute test posts millions of lines)."""

    def __init__(self, body: Callable[[int], list[bytes]] = lambda _: lines("us", "pv", 50),
                 keyed: bool = False, per_second: float | None = None) -> None:
        super().__init__(daemon=True)
        self.port: int | None = None
        self.acked: list[bytes] = []
        self.done = threading.Event()
        self._body, self._keyed = body, keyed
        self._interval = 1 / per_second if per_second else 0.0

    def run(self) -> None:
        n, next_at = 0, time.monotonic()
        while not self.done.is_set():
            body, key = self._body(n), f"collector-{id(self)}-{n}" if self._keyed else None
            while self.port is None or post(self.port, "pv", body, key) != 200:
                if self.done.wait(0.05):
                    return
            self.acked.extend(body)
            n += 1
            next_at += self._interval
            if self._interval and self.done.wait(max(0.0, next_at - time.monotonic())):
                return


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    c.start()
    yield c
    c.done.set()
    c.join(30)


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Streams a failed test left running are killed with their process group."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run(tmp_path: Path, procs: list, name: str, *extra: str):
    log = tmp_path / f"{name}.log"
    proc = subprocess.Popen(  # a session of its own: its process group is what a terminal's Ctrl-C reaches
        [sys.executable, "-m", "pipelines.stream", "--output", str(tmp_path / "out"), "--config",
         str(tmp_path / "job.yaml"), "--spool", str(tmp_path / "spool"), "--port", "0", *extra],
        cwd=ROOT, env=ENV, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    procs.append(proc)
    port = wait_for("the gateway", lambda: (m := PORT.search(log.read_bytes())) and int(m.group(1)), 60, proc, log)
    return proc, log, port


def payload_ids(out: Path) -> list[int]:
    return [orjson.loads(r["payload"])["id"] for r in archived(out)]


def stop_and_check(proc, log: Path, how: str) -> None:
    if how == "SIGTERM":
        proc.send_signal(signal.SIGTERM)
    else:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    assert proc.wait(120) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    assert "dpipe stream: stopping: the source stops at the next batch" in text
    assert "dpipe stream: stopped cleanly" in text, text[-3000:]


def test_stops_cleanly_under_load_and_goes_on_where_it_stopped(tmp_path: Path, collector: Collector,
                                                                procs: list) -> None:
    (tmp_path / "job.yaml").write_text(JOB)
    out = tmp_path / "out"
    for round_, how in enumerate(("SIGTERM", "SIGINT")):
        proc, log, collector.port = run(tmp_path, procs, f"stream{round_}")
        before = len(collector.acked)
        wait_for("lines archived while posting", lambda b=before: len(payload_ids(out)) > b + 200, 120, proc, log)
        stop_and_check(proc, log, how)
        collector.port = None
        ids = payload_ids(out)
        assert len(ids) == len(set(ids)), f"after the {how} stop a line was read twice"

    proc, log, collector.port = run(tmp_path, procs, "final", "--idle_stop", "3")
    wait_for("more acknowledged lines", lambda: len(collector.acked) > 0, 30)
    collector.done.set()
    collector.join(30)
    assert proc.wait(300) == 0, log.read_text()[-3000:]
    ids = payload_ids(out)
    want = {orjson.loads(line.split(b",", 2)[2])["id"] for line in collector.acked}
    assert len(ids) == len(set(ids)), "a line was read twice"
    assert want <= set(ids), f"{len(want - set(ids))} acknowledged lines lost"


def test_a_dead_runner_is_one_line_and_exit_1(tmp_path: Path, procs: list) -> None:
    (tmp_path / "job.yaml").write_text(JOB)
    proc, log, _ = run(tmp_path, procs, "stream")
    wait_for("the job", lambda: b"running on" in log.read_bytes(), 60, proc, log)
    prism = (tmp_path / "out" / "_stream" / "prism.pid").read_text()
    os.kill(int(prism), signal.SIGKILL)
    assert proc.wait(60) == 1
    text = log.read_text()
    assert "dpipe stream: the runner (Prism) died" in text and "Traceback" not in text, text[-3000:]
