"""End-to-end stream throughput: POSTed lines -> gateway -> spool -> `pipelines.stream` on Prism -> archive.

    python -m bench.stream [--lines 300000] [--config templates/jobs/engine.als.yaml]
    python -m bench.stream --steady --rate 20000 --seconds 60 [--config templates/jobs/engine.als.yaml] [--search]

A generated archive's lines are POSTed to the stream's in-process gateway (1000-line requests, 8 at a
time, each file's lines to its category) as fast as it takes them; the clock stops when every line is in
the archive or the dead letters (Parquet footers and JSON Lines counted). Beside it, the plain-Python
baseline (`bench.baseline`: the same parse, decorations, analyses and Parquet writes in one loop) over the
same files, in the same run.

`--steady` (bench/steady.py): live traffic at a fixed rate with error spikes every `--spike_every` seconds;
reports alarm latency (crossing POST acknowledged -> webhook notification), results delay (wall clock past
an interval's end + `stream.max_out_of_order`, the watermark's approximation, -> its final row first out), the
unread backlog each second (spool bytes no reader has cut into a batch yet; the spool's size also holds read
segments kept for a replay after a crash) and whether it stays bounded; `--search` adds the maximum
sustainable rate of the config and of the embedded defaults (doubling, then bisecting; each trial `--trial_seconds`).
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
from typing import Any

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
    parser.add_argument("--steady", action="store_true", help="fixed-rate live load (bench/steady.py)")
    parser.add_argument("--rate", type=int, default=20_000, help="--steady: lines/s")
    parser.add_argument("--seconds", type=float, default=60.0, help="--steady: seconds of load")
    parser.add_argument("--spike_every", type=float, default=15.0, help="--steady: seconds between spikes")
    parser.add_argument("--interval", type=int, default=10,
                        help="--steady: counters' and statistics' interval in seconds (0: the config's)")
    parser.add_argument("--search", action="store_true", help="--steady: also search the max sustainable rate")
    parser.add_argument("--trial_seconds", type=float, default=40.0)
    parser.add_argument("--search_cap", type=int, default=320_000)
    parser.add_argument("--search_start", type=int, nargs=2, default=(10_000, 40_000), metavar=("CONFIG", "DEFAULTS"),
                        help="first trial rates of the config's and the embedded defaults' searches")
    parser.add_argument("--search_bad", type=int, nargs=2, default=(0, 0), metavar=("CONFIG", "DEFAULTS"),
                        help="rates already found unbounded (0: none): the search bisects below them")
    parser.add_argument("--search_only", action="store_true", help="skip the measured run")
    args = parser.parse_args(argv)
    if args.steady:
        return steady_main(args)
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


def _ms(values: list[float]) -> str:
    from bench.steady import percentile

    p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
    return "-" if p50 is None else f"{p50:.2f} | {p99:.2f} | {len(values)}"


def steady_main(args: argparse.Namespace) -> int:
    """The steady-load mode: one measured run, the plain loop beside it, optionally the rate search."""
    from bench import steady

    if args.seconds < 5:
        raise SystemExit("--seconds must be at least 5")
    with tempfile.TemporaryDirectory(prefix="dpipe-bench-steady-") as tmp:
        work = Path(tmp)
        lines = int(min(max(args.rate * args.seconds, 20_000), 600_000))
        logs = steady.pool_archive(work, lines)
        traffic = steady.Traffic(logs)
        job = load_config(args.config)
        t0 = time.monotonic()
        baseline.run([str(p) for p in sorted(logs.iterdir())], str(work / "baseline"), job)
        plain = lines / (time.monotonic() - t0)
        webhook = steady.Webhook() if job.alarms else None
        config = steady.bench_config(args.config, work, webhook.url if webhook else None, args.interval) \
            if args.config else None
        if not args.search_only:
            measured(args, job, traffic, config, webhook, lines, plain)
        if webhook:
            webhook.close()
        if args.search:
            search(args, work, logs, traffic, lines, plain)
    return 0


def measured(args: argparse.Namespace, job: Any, traffic: Any, config: Path | None, webhook: Any, lines: int,
             plain: float) -> None:
    """The measured run at --rate: latencies, delays, backlog."""
    from bench import steady

    trial = steady.run_trial(traffic, args.rate, args.seconds, config,
                             args.spike_every if webhook else None, webhook, args.concurrency, settle=10.0)
    ooo = job.stream.max_out_of_order
    alarm = trial.alarm_latencies()
    delays = {kind: trial.result_delays(kind, ooo) for kind in ("counters", "stats")}
    first_card = None if trial.samples.first_card is None else trial.samples.first_card - trial.started
    backlog = [b for t, b in trial.samples.backlog if t <= trial.ended]
    print(f"\nsteady load: {args.rate:,} lines/s asked, {trial.achieved:,.0f} sent, {args.seconds:.0f} s, "
          f"{args.config or 'embedded defaults'}"
          + (f", counters and statistics every {args.interval} s" if args.interval and args.config else "")
          + f"; {trial.refused} requests refused\n")
    print("| measure | p50 s | p99 s | n |\n|---|---:|---:|---:|")
    print(f"| alarm: crossing POST acked -> webhook ({len(trial.spikes)} spikes) | {_ms(alarm)} |")
    for kind, values in delays.items():
        print(f"| {kind}: wall clock past end + {ooo:g} s -> its final row out | {_ms(values)} |")
    print(f"| cardinality: first POST -> first running row (day periods: no end in the run) | "
          f"{'-' if first_card is None else f'{first_card:.2f}'} | | |")
    spool = [b for t, b in trial.samples.spool if t <= trial.ended]
    print("\nunread backlog, bytes no reader has cut yet (MiB, every 5 s): "
          + " ".join(f"{b / 2**20:.1f}" for b in backlog[::5])
          + f"; max {max(backlog, default=0) / 2**20:.1f}; {'bounded' if trial.bounded() else 'GROWING'}")
    print("spool size, read segments kept for a replay after a crash included (MiB, every 5 s): "
          + " ".join(f"{b / 2**20:.1f}" for b in spool[::5]))
    print(f"plain Python loop, same work over {lines:,} lines of the same mix: {plain:,.0f} lines/s")
    print(f"BENCH alarm_latencies={len(alarm)} result_rows={sum(len(v) for v in trial.samples.first_seen.values())}"
          f" bounded={trial.bounded()}" + (f" FAILED {trial.failed}" if trial.failed else ""))


def search(args: argparse.Namespace, work: Path, logs: Path, traffic: Any, lines: int, plain: float) -> None:
    """The maximum sustainable rates of the config (as given, no webhook) and of the embedded defaults."""
    from bench import steady

    print("\nmaximum sustainable rate (unread backlog not growing over a trial's second half):", flush=True)
    rows = []
    for name, cfg, start, bad in ((args.config or "embedded defaults", args.config, args.search_start[0],
                                   args.search_bad[0]),
                                  ("embedded defaults", None, args.search_start[1], args.search_bad[1])):
        if cfg is None and rows and rows[0][0] == "embedded defaults":
            continue
        if cfg is not None:
            cfg = steady.bench_config(args.config, work, None, 0)  # the template itself, no webhook
        best, _ = steady.max_sustainable(traffic, cfg, start, args.trial_seconds, args.search_cap,
                                         known_bad=bad or None)
        rows.append((name, best))
    plain_of = {rows[0][0]: plain}
    if args.config:
        t0 = time.monotonic()
        baseline.run([str(p) for p in sorted(logs.iterdir())], str(work / "baseline-defaults"),
                     load_config(None))
        plain_of["embedded defaults"] = lines / (time.monotonic() - t0)
    print("\n| job | max sustainable lines/s | plain loop lines/s (same run) |\n|---|---:|---:|")
    for name, best in rows:
        print(f"| {name} | {best:,} | {plain_of[name]:,.0f} |")


if __name__ == "__main__":
    sys.exit(main())
