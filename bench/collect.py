"""Collector throughput: lines from log files to an acknowledging gateway (fsync on), beside a plain loop.

    python -m bench.collect [--lines 1000000] [--files 4] [--repeat 1]

Writes `--files` log files of about 200-byte pv lines (bench.gateway's generator), starts the gateway as its own
process (`python -m pipelines.gateway`, fsync on) on a fresh spool for each run, then:

- the baseline: one plain Python loop reads each file in 1 MiB blocks cut at the last newline and POSTs each
  block over one keep-alive connection (http.client), waiting for each 200: no checkpoints, no metrics, no
  rotation handling, nothing it could recover from;
- the collector: `python -m pipelines.collect` on the same files (read_from beginning, checkpoints fsynced),
  the clock from its start until its /metrics show every line acknowledged.

Both runs must leave exactly the lines written in the spool. The collector's CPU time is printed: lines per
CPU second is its speed on one core, whatever else the machine runs.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.gateway import _cpu_seconds, _http_get, _metric, make_bodies
from connectors.gateway.spool import spool_lines
from tests.servers import free_port

BLOCK = 1 << 20


@dataclass
class Result:
    name: str
    lines: int
    seconds: float
    cpu: float | None = None
    start: float = 0.0  # of `seconds`: until the process served (imports, first glob)

    @property
    def rate(self) -> float:
        return self.lines / self.seconds


def write_files(folder: Path, lines: int, files: int) -> list[Path]:
    """`files` live log files (pv0.0.log ...) holding `lines` lines in all."""
    folder.mkdir(parents=True)
    bodies = make_bodies(16, 1000)
    per_file = lines // files
    paths = []
    for n in range(files):
        path = folder / f"pv{n}.0.log"
        with path.open("wb") as f:
            for b in range(per_file // 1000):
                f.write(bodies[b % len(bodies)])
        paths.append(path)
    return paths


def start_gateway(spool: Path, tmp: Path) -> tuple[subprocess.Popen[str], int]:
    config = tmp / "gateway.yaml"
    config.write_text(f"gateway:\n  fsync: true\n  max_spool_bytes: {2**40}\n  max_in_flight: 256\n")
    server = subprocess.Popen([sys.executable, "-m", "pipelines.gateway", "--spool", str(spool), "--port", "0",
                               "--config", str(config)], stdout=subprocess.PIPE, text=True)
    ready = server.stdout.readline() if server.stdout else ""
    match = re.search(r"listening on http://[\d.]+:(\d+)", ready)
    if not match:
        raise SystemExit(f"the gateway did not start: {ready!r}")
    return server, int(match[1])


def stop(server: subprocess.Popen[str]) -> None:
    server.terminate()
    server.wait(60)


def check_spool(name: str, spool: Path, lines: int) -> None:
    found = len(spool_lines(spool))
    if found != lines:
        raise SystemExit(f"{name}: the spool holds {found} lines, not {lines}")


def run_plain(paths: list[Path], lines: int, tmp: Path) -> Result:
    """The baseline: read blocks, POST each, wait for its 200, one after the other."""
    spool = tmp / "spool-plain"
    server, port = start_gateway(spool, tmp)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        started = time.perf_counter()
        for path in paths:
            with path.open("rb") as f:
                rest = b""
                while block := f.read(BLOCK):
                    block = rest + block
                    end = block.rfind(b"\n") + 1
                    rest = block[end:]
                    conn.request("POST", "/v1/logs/pv", block[:end], {"Content-Type": "text/plain"})
                    response = conn.getresponse()
                    response.read()
                    if response.status != 200:
                        raise SystemExit(f"baseline: HTTP {response.status}")
        seconds = time.perf_counter() - started
        conn.close()
    finally:
        stop(server)
    check_spool("baseline", spool, lines)
    return Result("plain Python loop: read 1 MiB blocks + POST each (baseline)", lines, seconds)


def run_collector(folder: Path, lines: int, tmp: Path, batch: str, in_flight: int) -> Result:
    spool = tmp / "spool-collector"
    server, port = start_gateway(spool, tmp)
    metrics_port = free_port()
    config = tmp / "collector.yaml"
    config.write_text(yaml.safe_dump({
        "sources": [{"name": "bench", "paths": [str(folder / "*.log")]}],
        "gateways": {"urls": [f"http://127.0.0.1:{port}"]},
        "batch": {"bytes": batch, "lines": 100_000, "max_in_flight": in_flight, "linger": "50ms"},
        "checkpoints": {"path": str(tmp / "state" / "checkpoint.json")},
        "metrics": {"port": metrics_port},
    }))
    collector = None
    try:
        started = time.perf_counter()
        collector = subprocess.Popen([sys.executable, "-m", "pipelines.collect", "--config", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        serving = None
        while True:
            try:
                text = _http_get(metrics_port, "/metrics")
                serving = serving or time.perf_counter() - started
                acked = _metric(text, 'dpipe_collector_lines_acked_total{source="bench"}')
            except OSError:
                acked = 0
            if acked >= lines:
                break
            if collector.poll() is not None:
                raise SystemExit(f"the collector exited ({collector.returncode})")
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        cpu = _cpu_seconds(collector.pid)
    finally:
        if collector is not None:
            collector.terminate()
            collector.wait(60)
        stop(server)
    check_spool("collector", spool, lines)
    return Result(f"dpipe collector (batch {batch}, {in_flight} in flight, checkpoints fsynced)", lines, seconds, cpu,
                  serving or 0.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.collect")
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--batch", default="1MiB")
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the best is reported")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dpipe-bench-collect-") as name:
        tmp = Path(name)
        paths = write_files(tmp / "logs", args.lines, args.files)
        lines = sum(p.read_bytes().count(b"\n") for p in paths)
        size = sum(p.stat().st_size for p in paths)
        rows = []
        for run in (lambda n: run_plain(paths, lines, tmp / f"plain-{n}"),
                    lambda n: run_collector(tmp / "logs", lines, tmp / f"collector-{n}", args.batch, args.in_flight)):
            results = []
            for n in range(args.repeat):
                (tmp / f"plain-{n}").mkdir(exist_ok=True)
                (tmp / f"collector-{n}").mkdir(exist_ok=True)
                results.append(run(n))
            rows.append(max(results, key=lambda r: r.rate))
    print(f"\n{lines:,} lines ({size / lines:.0f} bytes/line, {size / 1e6:.0f} MB) in {args.files} files, "
          f"gateway with fsync on, {os.cpu_count()} cores\n")
    print("| run | wall s | of which start s | lines/s | MB/s | lines/s after start | CPU s | lines per CPU s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        cpu = f"{r.cpu:.2f} | {r.lines / r.cpu:,.0f}" if r.cpu else "- | -"
        after = f"{r.lines / (r.seconds - r.start):,.0f}" if r.start else "-"
        print(f"| {r.name} | {r.seconds:.2f} | {r.start:.2f} | {r.rate:,.0f} | {r.rate * size / lines / 1e6:,.1f} | "
              f"{after} | {cpu} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
