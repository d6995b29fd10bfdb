"""End-to-end stream throughput: POSTed lines -> gateway -> spool -> `pipelines.stream` on Prism -> archive.

    python -m bench.stream [--lines 300000] [--config templates/jobs/engine.als.yaml]

A generated archive's lines are POSTed to the stream's in-process gateway (1000-line requests, 8 at a
time, each file's lines to its category) as fast as it takes them; the clock stops when every line is in
the archive or the dead letters (Parquet footers and JSON Lines counted). Beside it, the plain-Python
baseline (`bench.baseline`: the same parse, decorations, analyses and Parquet writes in one loop) over the
same files, in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from bench import baseline
from pipelines.config import load_config
from pipelines.generate import Spec, generate
from transforms.category import category_from_path

ROOT = Path(__file__).resolve().parent.parent


def requests_of(logs: Path, per_request: int) -> list[tuple[str, bytes]]:
    """(category, body) of `per_request` lines each, from every plain file of the archive."""
    out = []
    for path in sorted(logs.iterdir()):
        if path.suffix in (".gz", ".bz2"):
            continue
        lines = [line for line in path.read_bytes().split(b"\n") if line]  # the gateway skips empty lines
        category = category_from_path(str(path))
        out += [(category, b"\n".join(lines[i:i + per_request])) for i in range(0, len(lines), per_request)]
    return out


async def post_all(port: int, requests: list[tuple[str, bytes]], concurrency: int) -> None:
    queue = list(reversed(requests))

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while queue:
            category, body = queue.pop()
            writer.write(b"POST /v1/logs/%s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                         % (category.encode(), len(body), body))
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            if b" 200 " not in status:
                raise RuntimeError(f"gateway answered {status!r}")
        writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def landed(out: Path) -> int:
    """Lines in the archive and the dead letters so far."""
    events = sum(pq.read_metadata(f).num_rows for f in (out / "events").glob("*/*/*.parquet"))
    dead = sum(f.read_bytes().count(b"\n") for f in (out / "deadletter").glob("*.jsonl"))
    return events + dead


def run_stream(requests: list[tuple[str, bytes]], total: int, work: Path, config: str | None,
               concurrency: int) -> tuple[float, float]:
    """(seconds to ingest, seconds until every line landed), from the first POST."""
    out, log = work / "out", work / "stream.log"
    cmd = [sys.executable, "-m", "pipelines.stream", "--output", str(out), "--spool", str(work / "spool"),
           "--port", "0"] + (["--config", config] if config else [])
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        port = None
        deadline = time.monotonic() + 60
        while port is None and time.monotonic() < deadline:
            found = re.search(rb"gateway on http://127.0.0.1:(\d+)", log.read_bytes())
            port = int(found.group(1)) if found else None
            time.sleep(0.1)
        if port is None:
            raise RuntimeError(f"the stream did not start: {log.read_text()[-2000:]}")
        started = time.monotonic()
        asyncio.run(post_all(port, requests, concurrency))
        ingested = time.monotonic() - started
        while landed(out) < total:
            if proc.poll() is not None:
                raise RuntimeError(f"the stream ended: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        return ingested, time.monotonic() - started
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=300_000)
    parser.add_argument("--config", default=None, help="job YAML (default: embedded defaults)")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dpipe-bench-stream-") as tmp:
        work = Path(tmp)
        generate(work / "archive", Spec(lines=args.lines, days=1, users=20_000, seed=5))
        logs = work / "archive" / "logs"
        for path in list(logs.iterdir()):  # the gateway takes plain lines: keep only plain files
            if path.suffix in (".gz", ".bz2"):
                path.unlink()
        requests = requests_of(logs, 1000)
        total = sum(body.count(b"\n") + 1 for _, body in requests)
        job = load_config(args.config)
        t0 = time.monotonic()
        baseline.run([str(p) for p in sorted(logs.iterdir())], str(work / "baseline"), job)
        plain = time.monotonic() - t0
        ingested, done = run_stream(requests, total, work, args.config, args.concurrency)
    print(f"\n{total:,} lines ({args.config or 'embedded defaults'}), 1000-line POSTs at concurrency "
          f"{args.concurrency}, 2 cores\n")
    print("| run | seconds | lines/s |\n|---|---:|---:|")
    print(f"| plain Python loop, same work from files (baseline) | {plain:.1f} | {total / plain:,.0f} |")
    print(f"| gateway ingest (2xx, fsynced) | {ingested:.1f} | {total / ingested:,.0f} |")
    print(f"| stream end to end: first POST -> last line archived | {done:.1f} | {total / done:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
