"""The collector with real processes: the gateway (`python -m pipelines.gateway`), a writer process appending
to log files (tests/test_collect_writer.py) and the collector (`python -m pipelines.collect`).

Each test ends with every line written in the spool exactly once, or, after a kill -9 of the collector, at
most twice for no more lines than the restarted collector counted as replayed. Fault tests wait for what they
observe (a retry, the first 429, a file released) by polling with a deadline, never for a fixed time.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow.dataset as ds
import pytest
import yaml

from connectors.gateway.spool import list_segments, read_lines, spool_lines
from tests.servers import LocalServer, free_port
from tests.test_collect_writer import metrics, total
from tests.test_stream import JOB as STREAM_JOB

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


class GatewayServer(LocalServer):
    """`python -m pipelines.gateway` on a spool; `port` may be given to restart on the same one."""

    name = "gateway"

    def __init__(self, spool: Path, port: int | None = None, config: Path | None = None) -> None:
        super().__init__()
        self.port = port or self.port
        self.spool = spool
        self.config = config

    def command(self) -> list[str]:
        extra = ["--config", str(self.config)] if self.config else []
        return [sys.executable, "-m", "pipelines.gateway", "--spool", str(self.spool), "--port", str(self.port),
                *extra]

    def probe(self) -> None:
        urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2).close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class CollectorProcess(LocalServer):
    """`python -m pipelines.collect --config FILE`, ready once its /metrics answers."""

    name = "collector"

    def __init__(self, config: Path, port: int) -> None:
        super().__init__()
        self.port = port
        self.config = config

    def command(self) -> list[str]:
        return [sys.executable, "-m", "pipelines.collect", "--config", str(self.config)]

    def probe(self) -> None:
        urllib.request.urlopen(self.metrics_url, timeout=2).close()

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def metrics(self) -> dict[str, float]:
        return metrics(self.metrics_url)

    def total(self, name: str) -> float:
        return total(self.metrics(), f"dpipe_collector_{name}")

    def kill(self) -> None:
        assert self._proc is not None
        self._proc.kill()
        self._proc.wait(30)

    def terminate(self) -> int:
        """SIGTERM, and the exit code."""
        assert self._proc is not None
        self._proc.terminate()
        code = self._proc.wait(60)
        self.stop()
        return code


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60, log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout} s" + (f"\n{log.read_text()[-3000:]}" if log else ""))


def spool_ids(spool: Path, lines: list[tuple[str, int, bytes]] | None = None) -> Counter[str]:
    """How often each line id is in the spool (or in the given spool lines)."""
    found: Counter[str] = Counter()
    for _, _, raw in spool_lines(spool) if lines is None else lines:
        found[orjson.loads(raw.split(b",", 2)[2])["id"]] += 1
    return found


def expected(counts: dict[str, int]) -> set[str]:
    return {f"{tag}-{n}" for tag, count in counts.items() for n in range(count)}


class Rig:
    """One test's processes and files: a gateway, the collector's config, writers; stopped at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.logs = tmp / "logs"
        self.logs.mkdir()
        self.spool = tmp / "spool"
        self.servers: list[LocalServer] = []
        self.writers: list[subprocess.Popen[bytes]] = []
        self.collector: CollectorProcess | None = None
        self.metrics_port = free_port()

    def gateway(self, port: int | None = None, **settings: Any) -> GatewayServer:
        config = None
        if settings:
            config = self.tmp / f"gateway-{len(self.servers)}.yaml"
            config.write_text(yaml.safe_dump({"gateway": settings}))
        server = GatewayServer(self.spool, port, config)
        server.start(self.tmp / f"gateway-{len(self.servers)}.log", timeout=30)
        self.servers.append(server)
        return server

    def config(self, gateway: GatewayServer | str, sources: list[dict[str, Any]] | None = None,
               **sections: Any) -> Path:
        url = gateway if isinstance(gateway, str) else gateway.url
        data: dict[str, Any] = {
            "host": "web-1",
            "sources": sources or [{"name": "app", "paths": [str(self.logs / "*.log")]}],
            "gateways": {"urls": [url]},
            "batch": {"lines": 2000, "bytes": "512KiB", "linger": "100ms"},
            "retry": {"initial_backoff": "50ms", "max_backoff": "500ms"},
            "tail": {"glob_interval": "200ms", "poll_interval": "20ms", "rotate_wait": "300ms",
                     "max_line_bytes": "64KiB"},
            "checkpoints": {"path": str(self.tmp / "state" / "checkpoint.json")},
            "metrics": {"port": self.metrics_port, "status_interval": "1s"},
        }
        for key, value in sections.items():
            data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
        path = self.tmp / "collector.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    def start_collector(self, config: Path) -> CollectorProcess:
        collector = CollectorProcess(config, self.metrics_port)
        self.collector_log = self.tmp / f"collector-{len(self.servers)}.log"
        collector.start(self.collector_log, timeout=30)
        self.servers.append(collector)
        self.collector = collector
        return collector

    def write(self, *steps: dict[str, Any], deadline: float = 90) -> subprocess.Popen[bytes]:
        """Start a writer process on these steps (it waits on the current collector's metrics)."""
        header = {"metrics": self.collector.metrics_url if self.collector else "",
                  "pid": self.collector.pid if self.collector else 0, "deadline": deadline}
        plan = self.tmp / f"plan-{len(self.writers)}.json"
        plan.write_bytes(orjson.dumps([header, *steps]))
        writer = subprocess.Popen([sys.executable, "-m", "tests.test_collect_writer", str(plan)], cwd=ROOT, env=ENV,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.writers.append(writer)
        return writer

    def written(self, writer: subprocess.Popen[bytes], timeout: float = 120) -> dict[str, int]:
        """The writer's line counts per tag, once it is done."""
        out, err = writer.communicate(timeout=timeout)
        assert writer.returncode == 0, err.decode()[-3000:]
        return orjson.loads(out)

    def caught_up(self, lines: int, timeout: float = 60) -> None:
        """Wait until the collector has every line acknowledged and nothing behind."""
        assert self.collector is not None
        collector = self.collector

        def done() -> bool:
            values = collector.metrics()
            behind = total(values, "dpipe_collector_bytes_behind")
            return total(values, "dpipe_collector_lines_acked_total") >= lines and behind == 0

        wait_for(f"{lines} lines acknowledged", done, timeout, self.collector_log)

    def close(self) -> None:
        for writer in self.writers:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
        for server in reversed(self.servers):
            server.stop()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


def assert_exactly_once(spool: Path, written: dict[str, int]) -> Counter[str]:
    found = spool_ids(spool)
    want = expected(written)
    missing = want - set(found)
    assert not missing, f"{len(missing)} lines never reached the spool, e.g. {sorted(missing)[:5]}"
    repeated = {i: n for i, n in found.items() if n > 1}
    assert not repeated, f"{len(repeated)} lines in the spool more than once, e.g. {list(repeated.items())[:5]}"
    assert set(found) == want, f"unexpected lines: {sorted(set(found) - want)[:5]}"
    return found


# ---- the cases ----


def test_append_while_tailing_with_read_from_end_and_beginning(rig: Rig) -> None:
    """Two sources: one starts at the end of what its file held at the first start, one at the beginning."""
    (rig.logs / "old").mkdir()
    old = rig.logs / "old" / "pv.0.log"
    old.write_bytes(b"us,1389000000,{\"id\":\"before-0\"}\n")  # read_from end: never sent
    early = rig.logs / "click.0.log"
    early.write_bytes(b"us,1389000000,{\"id\":\"early-0\"}\n")  # read_from beginning: sent
    gateway = rig.gateway()
    config = rig.config(gateway, [{"name": "old", "paths": [str(rig.logs / "old" / "*.log")], "read_from": "end"},
                                  {"name": "app", "paths": [str(rig.logs / "*.log")]}])
    collector = rig.start_collector(config)
    writer = rig.write({"op": "write", "path": str(old), "tag": "a", "lines": 6000},
                       {"op": "write", "path": str(early), "tag": "b", "lines": 4000},
                       {"op": "write", "path": str(old), "tag": "a", "lines": 3000})
    written = rig.written(writer)
    rig.caught_up(13_001)
    assert collector.terminate() == 0
    assert_exactly_once(rig.spool, {**written, "early": 1})
    categories = Counter(name.split(".", 1)[1] for name, _, _ in spool_lines(rig.spool))
    assert categories == {"pv": 9000, "click": 4001}  # from the file names, by the archive's rules


def test_rotation_by_rename_and_create_under_load_several_times(rig: Rig) -> None:
    """The application's own rotation (pv.0.log -> pv_<ts>_N) six times while writing, with lines written to
    the renamed file after the rename: each renamed file is read to its end, then released."""
    gateway = rig.gateway()
    collector = rig.start_collector(rig.config(gateway, [{"name": "app", "paths": [str(rig.logs / "*.0.log")]}]))
    live = str(rig.logs / "pv.0.log")
    steps: list[dict[str, Any]] = []
    for n in range(6):  # each new file is followed (its first lines acknowledged) before the load and the rename
        steps += [{"op": "write", "path": live, "tag": "pv", "lines": 100},
                  {"op": "wait_acked", "lines": n * 4050 + 100},
                  {"op": "write", "path": live, "tag": "pv", "lines": 3900},
                  {"op": "rotate", "path": live, "to": str(rig.logs / f"pv_2014011723010{n}_1"), "late": 50,
                   "late_tag": "late"}]
    steps.append({"op": "write", "path": live, "tag": "pv", "lines": 1000})
    written = rig.written(rig.write(*steps))
    assert written == {"pv": 25_000, "late": 300}
    rig.caught_up(25_300)
    wait_for("the renamed files released", lambda: collector.total("files_released_total") >= 6)
    assert collector.total("files_rotated_total") >= 6
    assert collector.total("files_watched") == 1  # only the live file is still open
    assert collector.terminate() == 0
    assert_exactly_once(rig.spool, written)


def test_copytruncate_and_truncate_are_read_again_from_the_start(rig: Rig) -> None:
    """logrotate's copytruncate, a plain truncation, and a truncation followed by more bytes than were read
    (the collector is stopped meanwhile): the size alone would not tell, the changed first line does."""
    gateway = rig.gateway()
    collector = rig.start_collector(rig.config(gateway))
    live = str(rig.logs / "app.0.log")
    writer = rig.write(
        {"op": "write", "path": live, "tag": "one", "lines": 3000},
        {"op": "wait_acked", "lines": 3000},
        {"op": "copytruncate", "path": live, "to": str(rig.logs / "app.0.log.1")},  # the glob is *.log
        {"op": "write", "path": live, "tag": "two", "lines": 1000},
        {"op": "wait_acked", "lines": 4000},
        {"op": "truncate", "path": live},
        {"op": "write", "path": live, "tag": "three", "lines": 500},
        {"op": "wait_acked", "lines": 4500},
        {"op": "signal", "signal": "SIGSTOP"},
        {"op": "truncate", "path": live},
        {"op": "write", "path": live, "tag": "four", "lines": 2000},  # more than the 500 lines read
        {"op": "signal", "signal": "SIGCONT"},
    )
    written = rig.written(writer)
    rig.caught_up(6500)
    assert collector.total("files_truncated_total") == 3
    assert collector.terminate() == 0
    assert_exactly_once(rig.spool, written)
    log = rig.collector_log.read_text()
    assert log.count("reading it again from the start") == 3, log[-3000:]
    assert "starts with other bytes" in log  # the fourth case: found by the fingerprint, not the size


def test_new_file_is_picked_up_and_a_deleted_file_is_read_then_released(rig: Rig) -> None:
    gateway = rig.gateway()
    collector = rig.start_collector(rig.config(gateway))
    doomed = str(rig.logs / "tmp.0.log")
    writer = rig.write(
        {"op": "write", "path": doomed, "tag": "doomed", "lines": 100},
        {"op": "wait_watched", "path": doomed},
        {"op": "write", "path": doomed, "tag": "doomed", "lines": 5000},
        {"op": "delete", "path": doomed},  # at once: the collector still holds it open and reads it to its end
        {"op": "write", "path": str(rig.logs / "click.0.log"), "tag": "new", "lines": 2000},
    )
    written = rig.written(writer)
    rig.caught_up(7100)
    wait_for("the deleted file released", lambda: collector.total("files_released_total") >= 1)
    fds = [os.readlink(p) for p in Path(f"/proc/{collector.pid}/fd").iterdir() if p.exists()]
    assert not [fd for fd in fds if "(deleted)" in fd], fds
    assert collector.total("files_watched") == 1
    assert collector.terminate() == 0
    assert_exactly_once(rig.spool, written)


def test_a_file_rotated_while_the_collector_was_stopped_is_read_to_its_end(rig: Rig) -> None:
    gateway = rig.gateway()
    config = rig.config(gateway, [{"name": "app", "paths": [str(rig.logs / "*.0.log")]}])
    collector = rig.start_collector(config)
    live = str(rig.logs / "pv.0.log")
    first = rig.written(rig.write({"op": "write", "path": live, "tag": "before", "lines": 3000}))
    rig.caught_up(3000)
    assert collector.terminate() == 0
    later = rig.written(rig.write({"op": "write", "path": live, "tag": "while", "lines": 2000},
                                  {"op": "rotate", "path": live, "to": str(rig.logs / "pv_20140117230103_1")},
                                  {"op": "write", "path": live, "tag": "after", "lines": 1000}))
    collector = rig.start_collector(config)
    rig.caught_up(3000)
    assert "pv_20140117230103_1" in rig.collector_log.read_text()  # found by its inode, outside the glob
    assert collector.terminate() == 0
    assert_exactly_once(rig.spool, {**first, **later})


def test_kill_9_mid_stream_then_restart_repeats_only_the_counted_replays(rig: Rig) -> None:
    gateway = rig.gateway()
    config = rig.config(gateway, batch={"lines": 500, "max_in_flight": 4})
    collector = rig.start_collector(config)
    writer = rig.write({"op": "write", "path": str(rig.logs / "pv.0.log"), "tag": "pv", "lines": 40_000,
                        "rate": 10_000})
    wait_for("some lines acknowledged", lambda: collector.total("lines_acked_total") >= 5000)
    collector.kill()
    first_acked = len(spool_lines(rig.spool))
    assert first_acked < 40_000, "the kill came too late to be mid-stream"
    collector = rig.start_collector(config)
    written = rig.written(writer)
    rig.caught_up(0)  # behind: 0 for every file
    replayed = collector.total("lines_replayed_total")
    assert collector.terminate() == 0
    found = spool_ids(rig.spool)
    assert set(found) == expected(written), "a line is missing"
    repeats = sum(n - 1 for n in found.values())
    assert max(found.values()) <= 2
    assert repeats <= replayed <= 4 * 500, (repeats, replayed)  # at most max_in_flight batches were in flight


def test_gateway_down_then_up_keeps_memory_bounded_and_loses_nothing(rig: Rig) -> None:
    gateway = rig.gateway()
    collector = rig.start_collector(rig.config(gateway, batch={"max_buffer_bytes": "512KiB", "bytes": "128KiB"}))
    live = str(rig.logs / "pv.0.log")
    first = rig.written(rig.write({"op": "write", "path": live, "tag": "up", "lines": 2000}))
    rig.caught_up(2000)
    gateway.stop()
    down = rig.written(rig.write({"op": "write", "path": live, "tag": "down", "lines": 10_000}))

    def retrying() -> bool:
        values = collector.metrics()
        return (total(values, "dpipe_collector_retries_total") >= 10
                and total(values, "dpipe_collector_bytes_behind") > 1_000_000)

    wait_for("retries while the gateway is down", retrying)
    buffered = collector.total("buffered_bytes")
    assert buffered <= (512 + 128 + 64) * 1024, buffered  # the files are the buffer, not memory
    assert collector.total("lines_acked_total") == 2000
    rig.gateway(port=gateway.port)  # up again on the same port
    rig.caught_up(12_000)
    assert collector.metrics()['dpipe_collector_responses_total{code="0"}'] >= 10  # connection errors, counted
    assert collector.terminate() == 0
    assert_exactly_once(rig.spool, {**first, **down})


def test_429_storm_from_a_small_spool_until_a_consumer_frees_space(rig: Rig) -> None:
    gateway = rig.gateway(max_spool_bytes=1_000_000, segment_bytes=100_000, segment_seconds=0.2)
    collector = rig.start_collector(rig.config(gateway, batch={"bytes": "128KiB"}))
    writer = rig.write({"op": "write", "path": str(rig.logs / "pv.0.log"), "tag": "pv", "lines": 12_000})
    wait_for("the first 429", lambda: collector.total("rate_limited_total") >= 1)
    assert collector.total("lines_acked_total") < 12_000
    consumed: list[tuple[str, int, bytes]] = []
    stop = threading.Event()

    def consume() -> None:  # what the stream's source does: read a sealed segment, then delete it
        while not stop.is_set():
            for segment in list_segments(rig.spool):
                if segment.sealed:
                    lines, _ = read_lines(segment.path, 0, segment.path.stat().st_size + 1)
                    consumed.extend((segment.name, offset, line) for offset, line in lines)
                    segment.path.unlink()
            stop.wait(0.05)

    consumer = threading.Thread(target=consume)
    consumer.start()
    try:
        written = rig.written(writer)
        rig.caught_up(12_000, timeout=90)
    finally:
        stop.set()
        consumer.join()
    storms = collector.total("rate_limited_total")
    assert collector.terminate() == 0
    found = spool_ids(rig.spool, [*consumed, *spool_lines(rig.spool)])
    assert storms >= 1 and set(found) == expected(written) and max(found.values()) == 1


def test_failover_raw_lines_long_lines_and_partial_lines(rig: Rig, tmp_path: Path) -> None:
    """The first gateway URL has nobody listening: batches go to the second (which wants a bearer token; the
    bodies are gzipped). A raw application log is
    wrapped as ALS with its parsed time; a long line goes cut to the dead-letter category; a last line
    without newline is sent after partial_line_timeout."""
    token = "collector-token-0123456789"
    gateway = rig.gateway(tokens=[{"project": "servers", "token": token, "categories": ["appLog", "collector*"]}])
    (rig.tmp / "token").write_text(token + "\n")
    dead = f"http://127.0.0.1:{free_port()}"
    app = rig.logs / "app.log"
    config = rig.config(dead, [{"name": "raw", "paths": [str(app)], "format": "raw", "category": "appLog",
                                "area": "fr", "ignore": ["DEBUG", "re:^\\S+ \\S+ TRACE"],
                                "time": {"pattern": r"^(\S+ \S+)", "format": "%Y-%m-%d %H:%M:%S"}}],
                        gateways={"urls": [dead, gateway.url], "token_file": str(rig.tmp / "token"), "gzip": True},
                        tail={"partial_line_timeout": "300ms"})
    app.write_bytes(b"2014-01-18 14:05:00 ERROR mysql gone away\nDEBUG noise\n2014-01-18 14:05:01 TRACE x\n"
                    b"no time here\n" + b"L" * 70_000 + b"\n2014-01-18 14:05:02 INFO half")
    collector = rig.start_collector(config)
    wait_for("every line sent", lambda: collector.total("lines_acked_total") >= 4)
    assert collector.total("failovers_total") >= 1
    assert not [k for k in collector.metrics() if k.startswith('dpipe_collector_responses_total{code="4')]
    values = collector.metrics()
    assert values['dpipe_collector_lines_skipped_total{reason="ignored",source="raw"}'] == 2
    assert values['dpipe_collector_lines_cut_total{source="raw"}'] == 1
    assert values['dpipe_collector_lines_time_unparsed_total{source="raw"}'] == 1  # "no time here"
    assert collector.terminate() == 0
    lines = {name.split(".", 1)[1]: [] for name, _, _ in spool_lines(rig.spool)}
    for name, _, raw in spool_lines(rig.spool):
        lines[name.split(".", 1)[1]].append(raw)
    assert set(lines) == {"appLog", "collectorDeadLetter"}
    area, ts, payload = lines["appLog"][0].split(b",", 2)
    assert (area, int(ts)) == (b"fr", 1390053900000)
    assert orjson.loads(payload) == {"host": "web-1", "msg": "2014-01-18 14:05:00 ERROR mysql gone away"}
    assert [orjson.loads(r.split(b",", 2)[2])["msg"] for r in lines["appLog"][1:]] == [
        "no time here", "2014-01-18 14:05:02 INFO half"]
    (letter,) = lines["collectorDeadLetter"]
    detail = orjson.loads(letter.split(b",", 2)[2])
    assert detail["reason"] == "line too long" and detail["bytes"] == 70_000 and detail["file"] == str(app)
    assert detail["line"] == "L" * 65536 and detail["category"] == "appLog"


def test_sigusr1_logs_the_status_line_and_a_bad_config_is_one_line_per_mistake(rig: Rig) -> None:
    gateway = rig.gateway()
    collector = rig.start_collector(rig.config(gateway, metrics={"status_interval": "1h"}))
    log = rig.collector_log
    assert collector.pid is not None
    os.kill(collector.pid, signal.SIGUSR1)
    wait_for("the status line", lambda: re.search(r"collector: \d+ files, lines read", log.read_text()), 10)
    assert collector.terminate() == 0
    bad = rig.tmp / "bad.yaml"
    bad.write_text("sources: [{paths: '/x/*.log', read_from: middle}]\ngateways: {urls: [ftp://x]}\n"
                   "checkpoints: {path: /tmp/x}\nbatch: {bytes: lots}\n")
    result = subprocess.run([sys.executable, "-m", "pipelines.collect", "--config", str(bad)], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{bad}: sources.0.read_from: Input should be 'beginning' or 'end'; got 'middle'" in result.stderr
    assert f"{bad}: gateways.urls.0: expected a gateway base URL such as http://gw1:8080" in result.stderr
    assert f"{bad}: batch.bytes: expected a positive size such as 64MiB" in result.stderr


def test_end_to_end_an_error_spike_in_a_log_file_raises_its_alarm_in_pipelines_stream(rig: Rig) -> None:
    """A server's log files -> the collector -> the gateway -> the spool -> `pipelines.stream` on Prism."""
    job, out = rig.tmp / "job.yaml", rig.tmp / "out"
    job.write_text(STREAM_JOB)  # the alarm job of tests/test_stream.py: >= 300 errors of an area in 10 s
    stream_log = rig.tmp / "stream.log"
    stream = subprocess.Popen([sys.executable, "-m", "pipelines.stream", "--no_gateway", "--spool", str(rig.spool),
                               "--output", str(out), "--config", str(job), "--idle_stop", "60"],
                              cwd=ROOT, env=ENV, stdout=stream_log.open("wb"), stderr=subprocess.STDOUT)
    try:
        gateway = rig.gateway()
        rig.start_collector(rig.config(gateway))
        written = rig.written(rig.write(
            {"op": "write", "path": str(rig.logs / "pv.0.log"), "tag": "pv", "lines": 2000},
            {"op": "write", "path": str(rig.logs / "error.0.log"), "tag": "quiet", "lines": 20, "area": "de"},
            {"op": "write", "path": str(rig.logs / "error.0.log"), "tag": "spike", "lines": 400, "area": "fr"},
        ))
        rig.caught_up(2420)

        def fired() -> list[dict[str, Any]]:
            files = (out / "alarms").glob("*.jsonl")
            rows = [orjson.loads(line) for f in files for line in f.read_bytes().splitlines()]
            if stream.poll() is not None:
                raise AssertionError(f"the stream ended ({stream.returncode}): {stream_log.read_text()[-3000:]}")
            return [r for r in rows if r["rule"] == "spike"]

        alarms = wait_for("the spike's alarm", fired, 120, stream_log)
        assert {a["key"]["area"] for a in alarms} == {"fr"} and alarms[0]["value"] >= 300
        assert rig.collector is not None and rig.collector.terminate() == 0

        def archived() -> Counter[str] | None:  # the spool's segments are deleted once read: count the archive
            if not (out / "events").exists():
                return None
            table = ds.dataset(out / "events", format="parquet", partitioning="hive").to_table(columns=["payload"])
            found = Counter(orjson.loads(p)["id"] for p in table.column("payload").to_pylist())
            return found if set(found) >= expected(written) else None

        found = wait_for("every line archived", archived, 60, stream_log)
        assert set(found) == expected(written) and max(found.values()) == 1
    finally:
        stream.terminate()
        stream.wait(60)
