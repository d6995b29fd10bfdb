"""Backfill throughput: dpipe on the local runner (1 and 2 worker processes) beside a plain-Python loop.

    python -m bench.backfill [--lines 1000000] [--days 4] [--repeat 1]

The baseline does the same work in one process without Beam: read every file block by block, parse with the
same pure functions, write the same Parquet partitions and dead letters. It is the practical limit of one
core; the Beam runs must approach it on one worker and pass it on two. Each run is a separate process whose
peak memory (the sum over its process tree, sampled every 50 ms) is reported beside its wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

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


def timed(cmd: list[str]) -> tuple[float, float, str]:
    """Run a command; return (seconds, peak tree RSS in MB, stdout)."""
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
    out, err = proc.communicate()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return seconds, peak, out


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backfill")
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1, help="runs per mode; the best is reported")
    parser.add_argument("--config", help="job YAML for every run (e.g. templates/jobs/engine.als.yaml)")
    parser.add_argument("--only", help="keep only these sections of --config, e.g. parse,index,decorate,routes")
    parser.add_argument("--workers", default="1,2", help="worker counts of the dpipe runs, e.g. 1 or 1,2")
    args = parser.parse_args(argv)
    if args.config and args.only:
        keep = set(args.only.split(","))
        job = {k: v for k, v in yaml.safe_load(Path(args.config).read_text()).items() if k in keep}
        WORK.mkdir(parents=True, exist_ok=True)
        (WORK / "bench-job.yaml").write_text(yaml.safe_dump(job))
        args.config = str(WORK / "bench-job.yaml")
    logs, manifest = archive(args.lines, args.days)
    size_mb = sum(p.stat().st_size for p in logs.iterdir()) / 1e6
    py = sys.executable
    glob = str(logs / "*")
    config = ["--config", args.config] if args.config else []
    modes = {"plain Python loop, 1 process (baseline)": [py, "-m", "bench.baseline", "--input", glob, *config]}
    for n in (int(w) for w in args.workers.split(",")):
        modes[f"dpipe backfill, local runner, {n} worker{'s' if n > 1 else ''}"] = [
            py, "-m", "pipelines.backfill", "--runner", "FnApiRunner", "--workers", str(n), "--input", glob, *config
        ]
    rows = []
    for name, cmd in modes.items():
        best = None
        for i in range(args.repeat):
            out_dir = WORK / f"out-{len(rows)}-{i}"
            subprocess.run(["rm", "-rf", str(out_dir)], check=True)
            seconds, peak, _ = timed([*cmd, "--output", str(out_dir)])
            summary = json.loads((out_dir / "summary.json").read_text())
            assert summary["lines_read"] == manifest["lines"] and summary["balanced"], summary
            if best is None or seconds < best[0]:
                best = (seconds, peak)
        rows.append((name, *best))
    base = rows[0][1]
    print(f"\n{manifest['lines']:,} lines, {len(list(logs.iterdir()))} files ({size_mb:,.0f} MB on disk, "
          f"history gzip), {os.cpu_count()} cores, config {args.config or 'embedded defaults'}\n")
    print("| run | wall s | lines/s | vs baseline | peak memory |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds, peak in rows:
        print(f"| {name} | {seconds:.1f} | {manifest['lines'] / seconds:,.0f} | {base / seconds:.2f}x | "
              f"{peak:,.0f} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
