"""Backfill throughput: dpipe on the local runner (1 and 2 worker processes) beside what a user would run
instead, over the same files in the same run.

    python -m bench.backfill [--lines 1000000] [--days 4] [--repeat 1] [--config FILE] [--layouts single,many]

Layouts: `single`, every line of the archive in one large plain file; `many`, the generator's files (one per
category and day, history gzip). Runs: a plain Python loop (split, orjson, one Parquet file:
bench.plain); dpipe's own pure functions in one loop without Beam (the same work as the pipeline); DuckDB with 2
threads converting the same lines with JSON validation (the `bench` extra); dpipe with 1 and 2 workers.
Each run is a separate process: wall seconds, lines/s, MB/s of line text, CPU seconds (user + system of the
process and its workers, which a loaded machine disturbs less than wall time), peak memory (the sum over its
process tree, sampled every 50 ms) and the load average before and after it.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from connectors.archives import open_decompressed
from pipelines.generate import GENERATOR_VERSION, Spec, generate

WORK = Path(__file__).resolve().parent / "work"


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total / 1024


@dataclass
class Run:
    """One measured process: wall and CPU seconds (its own and its waited-for children's), peak tree memory,
    and the load average (1 min) of the machine before and after it."""

    seconds: float
    cpu: float
    peak_mb: float
    load: tuple[float, float]


def load_average() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def timed(cmd: list[str]) -> Run:
    """Run a command to its end and measure it."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = load_average()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss_mb(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return Run(seconds, cpu, peak, (load, load_average()))


def archive(lines: int, days: int) -> tuple[Path, dict]:
    spec = Spec(lines=lines, days=days, users=max(10_000, lines // 20), seed=42)
    root = WORK / f"archive-{lines}-{days}"
    manifest_path = root / "manifest.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
        if manifest["spec"] == spec.__dict__ and manifest.get("generator") == GENERATOR_VERSION:
            return root / "logs", manifest
        shutil.rmtree(root)
    print(f"generating {lines:,} lines over {days} days ...", file=sys.stderr)
    return root / "logs", generate(root, spec)


def single_file(logs: Path) -> Path:
    """Every line of the archive, decompressed, in one plain file (`pv.0.log`: its lines all count as pv)."""
    target = logs.parent / "single" / "pv.0.log"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_suffix(".part")
        with open(part, "wb") as out:
            for path in sorted(logs.iterdir()):
                with open_decompressed(str(path)) as f:
                    while block := f.read(8 << 20):
                        out.write(block)
        part.rename(target)
    return target


DUCKDB_SQL = """
COPY (
  WITH lines AS (
    SELECT line, split_part(line, ',', 1) AS area, split_part(line, ',', 2) AS ts
    FROM read_csv({files}, columns = {{'line': 'VARCHAR'}}, delim = '\x01', quote = '', escape = '',
                  header = false, auto_detect = false, strict_mode = false, null_padding = true)
  ), parsed AS (
    SELECT area, TRY_CAST(ts AS BIGINT) AS ts, substr(line, length(area) + length(ts) + 3) AS payload FROM lines
  )
  SELECT area, ts, payload FROM parsed
  WHERE area <> '' AND ts IS NOT NULL AND payload LIKE '{{%' AND json_valid(payload)
) TO '{target}' (FORMAT parquet, COMPRESSION zstd)
"""


def duckdb_convert(paths: list[str], output: str, threads: int) -> None:
    """DuckDB converting the same lines: split, timestamp cast, JSON validation, one Parquet file."""
    import duckdb  # the `bench` extra, not a dpipe dependency

    os.makedirs(output, exist_ok=True)
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    files = "[" + ", ".join(f"'{p}'" for p in paths) + "]"
    con.execute(DUCKDB_SQL.format(files=files, target=os.path.join(output, "events.parquet")))
    events = con.execute(f"SELECT count(*) FROM '{os.path.join(output, 'events.parquet')}'").fetchone()[0]
    lines = con.execute(f"SELECT count(*) FROM read_csv({files}, columns = {{'line': 'VARCHAR'}}, "
                        "delim = '\x01', quote = '', escape = '', header = false, auto_detect = false, "
                        "strict_mode = false)").fetchone()[0]
    with open(os.path.join(output, "summary.json"), "w") as f:
        json.dump({"lines_read": lines, "events": events}, f)


def modes(pattern: str, config: list[str], workers: list[int]) -> dict[str, list[str]]:
    py = sys.executable
    runs = {
        "plain Python loop (split, orjson, one Parquet file)": [
            py, "-m", "bench.plain", "--input", pattern],
        "dpipe's pure functions in one loop, no Beam": [py, "-m", "bench.baseline", "--input", pattern, *config],
        "DuckDB, 2 threads (split, JSON validation, one Parquet file)": [
            py, "-m", "bench.backfill", "--duckdb", pattern],
    }
    for n in workers:
        runs[f"dpipe backfill, {n} worker{'s' if n > 1 else ''}"] = [
            py, "-m", "pipelines.backfill", "--runner", "FnApiRunner", "--workers", str(n), "--input", pattern, *config
        ]
    return runs


def fixed_cost(config: list[str], workers: list[int]) -> None:
    """dpipe start-up to a finished summary (and report) and exit: on an empty file with each worker count
    (no range to read runs on one worker whatever --workers says), and on two one-line files with the most
    workers (two ranges: the worker processes do start)."""
    empty = WORK / "empty" / "pv.0.log"
    empty.parent.mkdir(parents=True, exist_ok=True)
    empty.write_bytes(b"")
    tiny = WORK / "tiny"
    tiny.mkdir(parents=True, exist_ok=True)
    for n in range(2):
        (tiny / f"pv_{n}.log").write_bytes(b"us,1389913256,{}\n")
    runs = [(f"an empty file, --workers {n}", str(empty), n) for n in workers]
    if max(workers) > 1:
        runs.append((f"two one-line files, --workers {max(workers)}", str(tiny / "*.log"), max(workers)))
    print("\n| fixed cost: dpipe backfill on | wall s | CPU s | load before/after |\n|---|---:|---:|---:|")
    for label, pattern, n in runs:
        out_dir = WORK / "out-empty"
        shutil.rmtree(out_dir, ignore_errors=True)
        run = timed([sys.executable, "-m", "pipelines.backfill", "--runner", "FnApiRunner", "--workers", str(n),
                     "--input", pattern, "--output", str(out_dir), *config])
        print(f"| {label} | {run.seconds:.1f} | {run.cpu:.1f} | {run.load[0]:.1f} / {run.load[1]:.1f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backfill")
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1, help="runs per mode; the best is reported")
    parser.add_argument("--config", help="job YAML for every run (e.g. templates/jobs/engine.als.yaml)")
    parser.add_argument("--only", help="keep only these sections of --config, e.g. parse,index,decorate,routes")
    parser.add_argument("--workers", default="1,2", help="worker counts of the dpipe runs, e.g. 1 or 1,2")
    parser.add_argument("--layouts", default="single,many",
                        help="single: one large plain file of every line; many: the generator's files")
    parser.add_argument("--modes", help="keep only runs whose name contains one of these words, e.g. dpipe,DuckDB")
    parser.add_argument("--duckdb", metavar="GLOB", help=argparse.SUPPRESS)  # one DuckDB run (a child process)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.duckdb:
        duckdb_convert(sorted(glob.glob(args.duckdb)), args.output, 2)
        return 0
    if args.config and args.only:
        keep = set(args.only.split(","))
        job = {k: v for k, v in yaml.safe_load(Path(args.config).read_text()).items() if k in keep}
        WORK.mkdir(parents=True, exist_ok=True)
        (WORK / "bench-job.yaml").write_text(yaml.safe_dump(job))
        args.config = str(WORK / "bench-job.yaml")
    logs, manifest = archive(args.lines, args.days)
    config = ["--config", args.config] if args.config else []
    workers = [int(w) for w in args.workers.split(",")]
    layouts = {"single": single_file(logs).parent, "many": logs}
    print(f"\n{manifest['lines']:,} lines, {os.cpu_count()} cores, config {args.config or 'embedded defaults'}")
    fixed_cost(config, workers)
    for layout in args.layouts.split(","):
        folder = layouts[layout]
        files = sorted(folder.iterdir())
        disk_mb = sum(p.stat().st_size for p in files) / 1e6
        rows = []
        for name, cmd in modes(str(folder / "*"), config, workers).items():
            if args.modes and not any(w in name for w in args.modes.split(",")):
                continue
            best: Run | None = None
            for i in range(args.repeat):
                out_dir = WORK / f"out-{layout}-{len(rows)}-{i}"
                shutil.rmtree(out_dir, ignore_errors=True)
                run = timed([*cmd, "--output", str(out_dir)])
                summary = json.loads((out_dir / "summary.json").read_text())
                # DuckDB's CSV reader also ends a line at a lone \r (the generator's CRLF lines): within 1%
                exact = "DuckDB" not in name
                assert abs(summary["lines_read"] - manifest["lines"]) <= (0 if exact else manifest["lines"] // 100), (
                    name, summary["lines_read"])
                if best is None or run.seconds < best.seconds:
                    best = run
                shutil.rmtree(out_dir, ignore_errors=True)
            assert best is not None
            rows.append((name, best))
        text_mb = layouts["single"].joinpath("pv.0.log").stat().st_size / 1e6  # the lines' text, uncompressed
        print(f"\n{layout}: {len(files)} file{'s' if len(files) > 1 else ''}, {disk_mb:,.0f} MB on disk\n")
        print("| run | wall s | lines/s | MB/s | CPU s | CPU s per 1M lines | peak memory | vs plain loop | "
              "load before/after |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        base = rows[0][1].seconds if rows else 1.0
        for name, r in rows:
            print(f"| {name} | {r.seconds:.1f} | {manifest['lines'] / r.seconds:,.0f} | {text_mb / r.seconds:,.1f} | "
                  f"{r.cpu:.1f} | {r.cpu / manifest['lines'] * 1e6:.2f} | {r.peak_mb:,.0f} MB | "
                  f"{base / r.seconds:.2f}x | {r.load[0]:.1f} / {r.load[1]:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
