"""python -m pipelines.funnel --config JOB --input OUT --from YYYY-MM-DD --to YYYY-MM-DD [--funnel NAME] [--output DIR]

Funnels over the behaviour store a backfill or a stream wrote (`OUT/behaviour/date=.../*.parquet`, local, s3://
or hdfs://), with the job's funnel definitions: a batch run of the same `FunnelCounts` the pipelines use.
Attempts are counted by the period of their first step from --from to --to; rows up to the conversion window
after --to are read too, so an attempt that starts on the last day can still finish.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import tempfile
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import apache_beam as beam
import orjson
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from connectors.archives import InputError
from connectors.files import BEHAVIOUR_SCHEMA, WriteJsonRows, join, remove_tree
from pipelines.config import load_config
from pipelines.graph import RunContext
from pipelines.options import UsageError, beam_options, setup_logging
from pipelines.validation import cli
from transforms.behaviour import BehaviourBatch, BehaviourRow
from transforms.funnel import FunnelCounts, FunnelSpec


def day_globs(store: str, first: date, last: date) -> list[str]:
    """The store's files of each day in [first, last] that exist (a day without traffic has no folder)."""
    globs = []
    day = first
    while day <= last:
        pattern = join(store, f"date={day.isoformat()}", "*.parquet")
        if FileSystems.match([pattern])[0].metadata_list:
            globs.append(pattern)
        day += timedelta(days=1)
    return globs


def rows_of(table: pa.Table) -> Iterator[BehaviourBatch]:
    """A Parquet record batch of the store -> BehaviourBatch (the inverse of connectors.files' writer)."""
    dims = [n for n in table.column_names if n not in BEHAVIOUR_SCHEMA.names and n != "date"]
    cols = {n: table.column(n).to_pylist() for n in ("user", "action", "category", "area", *dims)}
    ts = table.column("ts").cast(pa.int64()).to_pylist()
    rows = [
        BehaviourRow(cols["user"][i], ts[i], cols["action"][i], cols["category"][i], cols["area"][i],
                     {d: cols[d][i] for d in dims if cols[d][i] is not None})
        for i in range(table.num_rows)
    ]
    yield BehaviourBatch("store", 0, rows)


def run_funnels(store: str, funnels: list[FunnelSpec], first: date, last: date, output: str,
                beam_args: list[str]) -> list[dict[str, Any]]:
    """Every funnel's results for attempts starting in [first, last] -> `output/funnels/`; returns them sorted
    by funnel, period and dimensions."""
    options = beam_options(beam_args, None)
    FileSystems.set_options(options)
    reach = max(math.ceil(f.window_ms / 86_400_000) for f in funnels)
    globs = day_globs(store, first, last + timedelta(days=reach))
    if not globs:
        raise InputError(f"no behaviour files in {store} from {first} to {last}")
    run = RunContext.new(output)
    with beam.Pipeline(options=options) as p:
        batches = (p | "Days" >> beam.Create(globs) | "Read" >> beam.io.ReadAllFromParquetBatched()
                   | "Rows" >> beam.FlatMap(rows_of))
        results = [
            batches | FunnelCounts(spec)
            | f"Keep[{spec.name}]" >> beam.Filter(lambda r: first.isoformat() <= r["start"] <= last.isoformat())
            for spec in funnels
        ]
        _ = results | "All" >> beam.Flatten() | "Write" >> WriteJsonRows("funnels", run.output, run.temp_dir)
    remove_tree(run.temp_dir)
    return read_results(output)


def format_funnels(results: list[dict[str, Any]]) -> str:
    """A table per funnel: users per step and conversions, one line per period and dimension values."""
    out: list[str] = []
    for name in sorted({r["funnel"] for r in results}):
        rows = [r for r in results if r["funnel"] == name]
        steps = [s["step"] for s in rows[0]["steps"]]
        dims = list(rows[0]["dimensions"])
        out.append(f"funnel {name} ({rows[0]['period']}): " + " -> ".join(steps))
        head = ["start", *dims, *steps, *(f"{a}->{b}" for a, b in itertools.pairwise(steps)), "overall"]
        out.append("  " + "  ".join(f"{h:>10}" for h in head))
        for r in rows:
            users = [s["users"] for s in r["steps"]]
            conversions = [f"{s['conversion']:.1%}" for s in r["steps"][1:]]
            cells = [r["start"], *r["dimensions"].values(), *map(str, users), *conversions, f"{r['overall']:.1%}"]
            out.append("  " + "  ".join(f"{c:>10}" for c in cells))
    return "\n".join(out)


def read_results(output: str) -> list[dict[str, Any]]:
    """The funnels/ results a pipeline wrote under `output`."""
    found = FileSystems.match([join(output, "funnels", "*.jsonl")])[0].metadata_list
    results = []
    for m in found:
        with FileSystems.open(m.path) as f:
            results += [orjson.loads(line) for line in f.read().splitlines() if line]
    return sorted(results, key=lambda r: (r["funnel"], r["start"], list(r["dimensions"].values())))


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.funnel", description=__doc__.split("\n\n")[1],
                                     allow_abbrev=False)
    parser.add_argument("--config", required=True, metavar="FILE", help="job YAML with `funnels:`")
    parser.add_argument("--input", required=True, metavar="DIR", help="a pipeline's --output (or its behaviour/)")
    parser.add_argument("--from", dest="first", required=True, type=date.fromisoformat, metavar="YYYY-MM-DD")
    parser.add_argument("--to", dest="last", required=True, type=date.fromisoformat, metavar="YYYY-MM-DD")
    parser.add_argument("--funnel", action="append", metavar="NAME", help="only these funnels (repeatable)")
    parser.add_argument("--output", metavar="DIR", help="keep the results in DIR/funnels/ (JSON Lines)")
    args, beam_args = parser.parse_known_args(argv)
    setup_logging()
    job = load_config(args.config)
    funnels = [f.spec() for f in job.funnels if not args.funnel or f.name in args.funnel]
    if not funnels:
        raise UsageError(f"{args.config}: no funnel {'named ' + ', '.join(args.funnel) if args.funnel else ''}"
                         f" (funnels: {', '.join(f.name for f in job.funnels) or 'none'})")
    if args.last < args.first:
        raise UsageError("--to is before --from")
    store = args.input if args.input.rstrip("/").endswith("behaviour") else join(args.input, "behaviour")
    with tempfile.TemporaryDirectory(prefix="dpipe-funnel-") as scratch:
        results = run_funnels(store, funnels, args.first, args.last, args.output or scratch, beam_args)
    print(format_funnels(results) or "no attempt started in that period")
    return 0


if __name__ == "__main__":
    sys.exit(main())
