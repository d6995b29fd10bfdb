"""Gateway throughput: POSTs of ALS lines made durable in the spool, beside a naive write-and-fsync loop.

    python -m bench.gateway [--requests 2000] [--concurrency 8] [--lines-per-request 1000]

The gateway runs as its own process (`python -m pipelines.gateway`) on a free loopback port with a temporary
spool, once with fsync and once without. The load client is this process: asyncio connections that send
prebuilt HTTP/1.1 requests over keep-alive and read the answers, so it costs little CPU (its share is printed:
far below one core means the client is not the bottleneck). Every request must get 200, and the spool must
hold exactly the bytes sent.

The baseline does the same durable work without HTTP: one loop appends each body to a file and fsyncs it,
one fsync per request, the naive way. The gateway's group commit shares one fsync among all the requests that
arrived during the previous one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from connectors.gateway.spool import spool_bytes

CATEGORY = "pv"
_CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length: *(\d+)")


def make_bodies(count: int, lines: int, seed: int = 7) -> list[bytes]:
    """`count` distinct bodies of `lines` realistic pv lines (about 200 bytes each, unique ids)."""
    rnd = random.Random(seed)
    uris = ("/", "/api/energy", "/api/quest/complete", "/api/shop/buy", "/api/friends")
    bodies = []
    for b in range(count):
        out = []
        for i in range(lines):
            payload = {"id": f"{b}-{i}", "uid": rnd.randrange(10**6), "level": rnd.randrange(1, 90), "v": "2.4.1",
                       "sid": f"{rnd.getrandbits(64):016x}",
                       "_log_info": {"ip": f"{rnd.randrange(1, 224)}.{rnd.randrange(256)}.{rnd.randrange(256)}.1",
                                     "uri": rnd.choice(uris), "host": "web-3", "rid": rnd.getrandbits(48),
                                     "elapsed": round(rnd.random(), 4)}}
            out.append(b"%s,%d,%s" % (rnd.choice((b"us", b"fr", b"de", b"th")), 1389000000000 + b * lines + i,
                                      orjson.dumps(payload)))
        bodies.append(b"\n".join(out) + b"\n")
    return bodies


@dataclass
class Result:
    name: str
    requests: int
    lines: int
    seconds: float
    latencies: list[float]
    fsyncs: int | None = None
    client_cpu: float | None = None
    server_cpu: float | None = None

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000


async def _drive(port: int, bodies: list[bytes], requests: int, concurrency: int) -> tuple[list[float], Counter]:
    """Send `requests` POSTs over `concurrency` keep-alive connections; return latencies and status counts."""
    prebuilt = [b"POST /v1/logs/%s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (CATEGORY.encode(), len(body), body) for body in bodies]
    todo = iter(range(requests))
    latencies: list[float] = []
    statuses: Counter[int] = Counter()

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for n in todo:
            started = time.perf_counter()
            writer.write(prebuilt[n % len(prebuilt)])
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            length = _CONTENT_LENGTH.search(head)
            await reader.readexactly(int(length[1]) if length else 0)
            latencies.append(time.perf_counter() - started)
            statuses[int(head[9:12])] += 1
        writer.close()
        await writer.wait_closed()

    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return latencies, statuses


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match[1]) if match else float("nan")


def run_gateway(name: str, bodies: list[bytes], args: argparse.Namespace, fsync: bool) -> Result:
    """Start the gateway, drive it, check the spool, stop it."""
    with tempfile.TemporaryDirectory(prefix="dpipe-bench-") as tmp:
        config = Path(tmp) / "job.yaml"
        config.write_text(f"gateway:\n  fsync: {str(fsync).lower()}\n  max_spool_bytes: {2**40}\n")
        spool = Path(tmp) / "spool"
        server = subprocess.Popen([sys.executable, "-m", args.server_module, "--spool", str(spool), "--port", "0",
                                   "--config", str(config)], stdout=subprocess.PIPE, text=True)
        try:
            ready = server.stdout.readline() if server.stdout else ""
            match = re.search(r"listening on http://[\d.]+:(\d+)", ready)
            if not match:
                raise SystemExit(f"{args.server_module} did not start: {ready!r}")
            port = int(match[1])
            asyncio.run(_drive(port, bodies, args.concurrency * 4, args.concurrency))  # warm up
            sent_before = spool_bytes(spool)
            cpu_server, cpu_client = _cpu_seconds(server.pid), time.process_time()
            started = time.perf_counter()
            latencies, statuses = asyncio.run(_drive(port, bodies, args.requests, args.concurrency))
            seconds = time.perf_counter() - started
            cpu_server, cpu_client = _cpu_seconds(server.pid) - cpu_server, time.process_time() - cpu_client
            metrics = _http_get(port, "/metrics")
        finally:
            server.terminate()
            server.wait(60)
        if statuses != Counter({200: args.requests}):
            raise SystemExit(f"{name}: not every request was accepted: {dict(statuses)}")
        expected = sum(len(bodies[n % len(bodies)]) for n in range(args.requests))
        if spool_bytes(spool) - sent_before != expected:
            raise SystemExit(f"{name}: the spool holds {spool_bytes(spool) - sent_before} new bytes, not {expected}")
    fsyncs = int(_metric(metrics, "dpipe_sink_fsync_seconds_count")) if fsync else None
    return Result(name, args.requests, args.requests * args.lines_per_request, seconds, latencies, fsyncs,
                  cpu_client / seconds, cpu_server / seconds)


def _http_get(port: int, path: str) -> str:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path)
    text = conn.getresponse().read().decode()
    conn.close()
    return text


def run_naive(bodies: list[bytes], args: argparse.Namespace) -> Result:
    """The baseline: append each body to one file and fsync it, one request after the other."""
    latencies = []
    with tempfile.TemporaryDirectory(prefix="dpipe-bench-") as tmp:
        fd = os.open(Path(tmp) / "naive.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        started = time.perf_counter()
        for n in range(args.requests):
            t = time.perf_counter()
            os.write(fd, bodies[n % len(bodies)])
            os.fdatasync(fd)
            latencies.append(time.perf_counter() - t)
        seconds = time.perf_counter() - started
        os.close(fd)
    return Result("plain Python loop: write + fsync per request (baseline)", args.requests,
                  args.requests * args.lines_per_request, seconds, latencies, args.requests)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--lines-per-request", type=int, default=1000)
    parser.add_argument("--server-module", default="pipelines.gateway",
                        help="module with the gateway's command line (to compare another server)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per mode; the best is reported")
    args = parser.parse_args(argv)
    bodies = make_bodies(16, args.lines_per_request)
    line_bytes = sum(map(len, bodies)) / len(bodies) / args.lines_per_request
    runs: list[Callable[[], Result]] = [
        lambda: run_naive(bodies, args),
        lambda: run_gateway(f"gateway ({args.server_module}), fsync on", bodies, args, fsync=True),
        lambda: run_gateway(f"gateway ({args.server_module}), fsync off", bodies, args, fsync=False),
    ]
    rows = [max((run() for _ in range(args.repeat)), key=lambda r: r.lines / r.seconds) for run in runs]
    print(f"\n{args.requests:,} POSTs of {args.lines_per_request:,} lines ({line_bytes:.0f} bytes/line), "
          f"concurrency {args.concurrency}, {os.cpu_count()} cores\n")
    print("| run | lines/s | MB/s | p50 ms | p99 ms | fsyncs | client CPU | server CPU |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        mb = r.lines * line_bytes / r.seconds / 1e6
        cpu = [f"{c:.0%}" if c is not None else "-" for c in (r.client_cpu, r.server_cpu)]
        fsyncs = f"{r.fsyncs:,}" if r.fsyncs is not None else "-"
        print(f"| {r.name} | {r.lines / r.seconds:,.0f} | {mb:,.1f} | {r.percentile(0.5):.1f} | "
              f"{r.percentile(0.99):.1f} | {fsyncs} | {cpu[0]} | {cpu[1]} |")
    busy = [r.name for r in rows if r.client_cpu is not None and r.client_cpu > 0.8]
    if busy:
        print(f"\nwarning: the load client used most of a core in {', '.join(busy)}: it may be the bottleneck")
    return 0


if __name__ == "__main__":
    sys.exit(main())
