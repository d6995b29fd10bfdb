"""python -m pipelines.backfill --input GLOB [--input GLOB ...] --output DIR [--config FILE] [Beam options]

The bounded entry point: historical archives (plain, .gz, .bz2; local, s3://, hdfs://) through the one
pipeline definition. It only picks the source, the options and the runner; `pipelines.graph` does the rest.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

import apache_beam as beam
import orjson
from apache_beam.io.filesystems import FileSystems

from connectors.archives import STATS, InputError, ReadArchives, check_inputs
from connectors.files import join, remove_tree
from connectors.search import install_templates
from connectors.summary import SUMMARY_FILE, WriteSummary
from pipelines import graph
from pipelines.config import ConfigError, JobConfig, load_config
from pipelines.options import UsageError, beam_options, setup_logging

log = logging.getLogger("dpipe.backfill")


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.backfill",
        description="Backfill ALS log archives: parse every line, archive events as Parquet, keep dead letters.",
        epilog="Other options go to Beam, e.g. --runner FlinkRunner. The default runner is the local FnApiRunner.",
        allow_abbrev=False,
    )
    parser.add_argument("--input", action="append", required=True, metavar="GLOB",
                        help="files to read (repeatable); '**' matches across folders")
    parser.add_argument("--output", required=True, metavar="DIR", help="where events/, deadletter/ and summary.json go")
    parser.add_argument("--config", metavar="FILE", help="job YAML (see templates/jobs/); default: embedded defaults")
    parser.add_argument("--workers", type=int, metavar="N", help="local runner: N worker processes (default 1)")
    parser.add_argument("--es_install_templates", action="store_true",
                        help="install the index template and lifecycle policy (idempotent) before writing")
    return parser.parse_known_args(argv)


def build_pipeline(
    pipeline: beam.Pipeline, inputs: list[str], job: JobConfig, run: graph.RunContext
) -> beam.PCollection:
    """The backfill: ReadArchives -> the one graph -> summary.json. Returns the summary PCollection."""
    read = pipeline | "ReadArchives" >> ReadArchives(inputs, job.read.chunk_bytes, job.read.block_bytes)
    outputs = graph.build(read.lines, job, run)
    counts = (read[STATS], *outputs.counts)
    return pipeline | "WriteSummary" >> WriteSummary(run.output, counts, outputs.written())


def run_backfill(inputs: list[str], output: str, job: JobConfig, beam_args: list[str],
                 workers: int | None = None, install_templates: bool = False) -> dict[str, Any]:
    """Run the backfill to completion and return its summary (also in `<output>/summary.json`)."""
    options = beam_options(beam_args, workers)
    FileSystems.set_options(options)
    check_inputs(inputs)
    if install_templates:
        prepare_search_cluster(job)
    run = graph.RunContext.new(output)
    with beam.Pipeline(options=options) as pipeline:
        build_pipeline(pipeline, inputs, job, run)
    remove_tree(run.temp_dir)
    with FileSystems.open(join(run.output, SUMMARY_FILE)) as f:
        return orjson.loads(f.read())


def prepare_search_cluster(job: JobConfig) -> None:
    """--es_install_templates: the index template and lifecycle policy, before any document is written."""
    if job.elasticsearch is None:
        raise UsageError("--es_install_templates needs an `elasticsearch:` section in the job config")
    try:
        installed = install_templates(job.elasticsearch.settings(), job.index.prefix)
    except Exception as err:  # the cluster's own words: unreachable, unauthorised, bad template
        raise InputError(f"cannot install templates into {', '.join(job.elasticsearch.hosts)}: {err}") from None
    log.info("installed %s", ", ".join(installed))


def format_summary(summary: dict[str, Any], output: str, seconds: float) -> str:
    """A few human lines: how much, how fast, where it went, and why lines were rejected."""
    lines = summary["lines_read"]

    def top(counts: dict[str, int], n: int = 6) -> str:
        items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        shown = ", ".join(f"{k} {v:,}" for k, v in items[:n])
        return shown + (f", +{len(items) - n} more" if len(items) > n else "")

    out = [
        f"dpipe backfill: {lines:,} lines from {summary['files_read']:,} files "
        f"({summary['bytes_read'] / 1e6:,.1f} MB) in {seconds:,.1f} s ({lines / max(seconds, 1e-9):,.0f} lines/s)",
        f"  events        {summary['events']:>12,}   {top(summary['categories'])}",
        f"  dead letters  {summary['dead_letters']:>12,}   {top(summary['dead_letter_reasons'])}",
    ]
    if summary["decorations"]:
        out.append(f"  decorated     {top(summary['decorations'])}")
    if summary["routes"]:
        out.append(f"  routes        {top(summary['routes'])}; unmatched {summary['unmatched']:,}")
    results = {k: summary[k] for k in ("alarms", "counters", "cardinality", "stats") if summary.get(k)}
    if results:
        out.append("  analysis      " + ", ".join(f"{k} {v:,}" for k, v in results.items()))
    if summary.get("index"):
        out.append(f"  indexed       {top(summary['index'])}")
    if summary["sink_failures"]:
        out.append(f"  sink failures {top(summary['sink_failures'])} (in deadletter/, the events are archived)")
    out += [
        f"  output        {output}  "
        + ", ".join(f"{sink}/ {n} files" for sink, n in summary["files"].items()),
    ]
    if summary["balanced"]:
        out.append("  check         lines_read == events + dead_letters: every line is accounted for")
    else:
        out.append(
            f"  CHECK FAILED  lines_read {lines:,} != events {summary['events']:,} + "
            f"dead letters {summary['dead_letters']:,}"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args, beam_args = parse_args(argv)
    setup_logging()
    try:
        job = load_config(args.config)
        started = time.monotonic()
        summary = run_backfill(args.input, args.output, job, beam_args, args.workers, args.es_install_templates)
    except (ConfigError, InputError, UsageError) as err:
        print(f"dpipe: {err}", file=sys.stderr)
        return 2
    print(format_summary(summary, args.output, time.monotonic() - started))
    return 0 if summary["balanced"] else 1


if __name__ == "__main__":
    sys.exit(main())
