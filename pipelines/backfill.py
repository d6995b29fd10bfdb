"""python -m pipelines.backfill --input GLOB [--input GLOB ...] --output DIR [--config FILE] [Beam options]

The bounded entry point: historical archives (plain, .gz, .bz2; local, s3://, hdfs://) through the one
pipeline definition. It only picks the source, the options and the runner; `pipelines.graph` does the rest.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import apache_beam as beam
import orjson
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from connectors.archives import STATS, InputError, ReadArchives, check_inputs, plan_inputs
from connectors.files import join, remove_tree
from connectors.progress import ProgressBar
from connectors.search import install_templates
from connectors.summary import SUMMARY_FILE, WriteSummary
from connectors.summary import top_counts as top
from pipelines import graph, resume
from pipelines.components import COMPONENTS
from pipelines.config import ConfigError, JobConfig, load_config
from pipelines.funnel import format_funnels, read_results
from pipelines.options import LOCAL_RUNNERS, UsageError, beam_options, setup_logging

log = logging.getLogger("dpipe.backfill")
DEFAULT_WAVE_BYTES = 1 << 30


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
    parser.add_argument("--skip_done", action="store_true",
                        help="resumable: run in waves recorded in OUTPUT/_done/ and skip files already done there")
    parser.add_argument("--wave_mb", type=int, default=DEFAULT_WAVE_BYTES >> 20, metavar="MB",
                        help="with --skip_done: input megabytes per wave (default %(default)s)")
    parser.add_argument("--es_install_templates", action="store_true",
                        help="install the index template and lifecycle policy (idempotent) before writing")
    return parser.parse_known_args(argv)


def build_pipeline(
    pipeline: beam.Pipeline, inputs: list[str], job: JobConfig, run: graph.RunContext, summary_path: str,
    progress_dir: str | None = None,
) -> beam.PCollection:
    """The backfill: ReadArchives -> the one graph -> the summary file. Returns the summary PCollection."""
    several = pipeline.options.view_as(DirectOptions).direct_num_workers != 1  # 0: a worker per core
    read = pipeline | "ReadArchives" >> ReadArchives(inputs, job.read.chunk_bytes, job.read.block_bytes,
                                                     progress_dir, largest_first=several)
    outputs = graph.build(read.lines, job, run)
    counts = (read[STATS], *outputs.counts)
    return pipeline | "WriteSummary" >> WriteSummary(summary_path, counts, outputs.written())


def run_backfill(inputs: list[str], output: str, job: JobConfig, beam_args: list[str],
                 workers: int | None = None, install_templates: bool = False,
                 skip_done: bool = False, wave_bytes: int = DEFAULT_WAVE_BYTES) -> dict[str, Any]:
    """Run the backfill to completion and return its summary (also in `<output>/summary.json`).

    With `skip_done` the inputs run in waves of about `wave_bytes`, each recorded in `<output>/_done/` once
    its outputs are published, and files recorded by an earlier run are skipped (see pipelines.resume).
    """
    options = beam_options(beam_args, workers)
    FileSystems.set_options(options)
    if install_templates:
        prepare_search_cluster(job)
    if skip_done:
        summary = _run_waves(inputs, output, job, options, wave_bytes)
    else:
        check_inputs(inputs)
        if workers and workers > 1 and len(plan_inputs(inputs, job.read.chunk_bytes)) < 2:
            log.info("one range to read (%s): one worker", ", ".join(inputs))
            options = beam_options(beam_args, 1)  # a second worker process would only cost its start-up
        summary = _run_once(inputs, output, job, options, lambda run: join(run.output, SUMMARY_FILE))
    return summary


def _run_once(inputs: list[str], output: str, job: JobConfig, options: PipelineOptions,
              summary_path: Callable[[graph.RunContext], str], label: str = "") -> dict[str, Any]:
    run = graph.RunContext.new(output)
    path = summary_path(run)
    with _progress_bar(inputs, options, label) as progress_dir, beam.Pipeline(options=options) as pipeline:
        build_pipeline(pipeline, inputs, job, run, path, progress_dir)
    with FileSystems.open(path) as f:
        summary = orjson.loads(f.read())
    remove_tree(run.temp_dir)
    return summary


def _run_waves(inputs: list[str], output: str, job: JobConfig, options: PipelineOptions,
               wave_bytes: int) -> dict[str, Any]:
    """Run the files no earlier wave recorded, wave by wave; summary.json sums every wave's record."""
    records = resume.read_records(output)
    files = resume.list_inputs(inputs)
    todo = resume.undone(files, records)
    log.info("%d of %d input files already done in %s (%d waves); %d to go",
             len(files) - len(todo), len(files), output, len(records), len(todo))
    waves = list(resume.plan_waves(todo, wave_bytes))
    for n, wave in enumerate(waves, 1):
        log.info("wave %d/%d: %d files, %.1f MB", n, len(waves), len(wave), sum(f.size for f in wave) / 1e6)
        summary = _run_once([f.path for f in wave], output, job, options,
                            lambda run: join(run.temp_dir, SUMMARY_FILE), label=f"wave {n}/{len(waves)}")
        record = resume.WaveRecord(resume.wave_id(wave), wave, summary)
        resume.write_record(output, record)
        records.append(record)
    summary = resume.total_summary(records)
    with FileSystems.create(join(output, SUMMARY_FILE)) as f:
        f.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
    return summary


@contextlib.contextmanager
def _progress_bar(inputs: list[str], options: PipelineOptions, label: str) -> Iterator[str | None]:
    """On a terminal, with the local runner: a progress bar on stderr (connectors/progress.py), fed through a
    local folder the read workers write to. Elsewhere (logs, CI, a cluster): nothing; the periodic progress
    lines remain."""
    if not sys.stderr.isatty() or options.view_as(StandardOptions).runner not in LOCAL_RUNNERS:
        yield None
        return
    total = 0
    with contextlib.suppress(Exception):  # the inputs were checked already; a bar is no reason to fail
        total = sum({m.path: m.size_in_bytes for r in FileSystems.match(inputs) for m in r.metadata_list}.values())
    with tempfile.TemporaryDirectory(prefix="dpipe-progress-") as folder:
        bar = ProgressBar(folder, total, sys.stderr, label).start()
        try:
            yield folder
        finally:
            bar.stop()


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
    results = {k: v for c in COMPONENTS for k, v in c.summary(summary).items()}
    if results:
        out.append("  analysis      " + ", ".join(f"{k} {v:,}" for k, v in results.items()))
    out += [line for c in COMPONENTS for line in c.summary_lines(summary)]
    if summary["sink_failures"]:
        out.append(f"  sink failures {top(summary['sink_failures'])} (in deadletter/, the events are archived)")
    out += [
        f"  output        {output}  "
        + ", ".join(f"{sink}/ {n} files" for sink, n in summary["files"].items()),
    ]
    if summary.get("file_errors"):
        out.append(f"  INCOMPLETE    {len(summary['file_errors'])} files could not be read to their end "
                   "(listed on stderr and in summary.json file_errors)")
    if summary["balanced"]:
        out.append("  check         lines_read == events + dead_letters: every line is accounted for")
    else:
        out.append(
            f"  CHECK FAILED  lines_read {lines:,} != events {summary['events']:,} + "
            f"dead letters {summary['dead_letters']:,}"
        )
    return "\n".join(out)


def write_backfill_report(output: str) -> str | None:
    """OUTPUT/report.html, the dashboard's pages as one offline file; local outputs only (None otherwise)."""
    from connectors.dashboard.data import load
    from connectors.dashboard.render import MissingChartLibrary, write_report

    if "://" in output:
        return None
    try:
        return str(write_report(output, load(output)))
    except MissingChartLibrary as err:
        log.warning("no report.html: %s", err)
        return None


def main(argv: list[str] | None = None) -> int:
    args, beam_args = parse_args(argv)
    setup_logging()
    try:
        job = load_config(args.config)
        started = time.monotonic()
        summary = run_backfill(args.input, args.output, job, beam_args, args.workers, args.es_install_templates,
                               args.skip_done, args.wave_mb << 20)
    except (ConfigError, InputError, UsageError) as err:
        print(f"dpipe: {err}", file=sys.stderr)
        return 2
    print(format_summary(summary, args.output, time.monotonic() - started))
    report = write_backfill_report(args.output)
    if report:
        print(f"  report        {report}")
    if job.funnels:
        print(format_funnels(read_results(args.output)))
    for message in file_error_lines(summary):
        print(f"dpipe: {message}", file=sys.stderr)
    if not summary["balanced"]:
        return 1
    return 2 if summary.get("file_errors") else 0


def file_error_lines(summary: dict[str, Any]) -> list[str]:
    """One line per input file that could not be read to its end, with how many of its lines were read."""
    return [f"{path}: {reason} ({lines:,} lines read before it, processed)"
            for path, reasons in summary.get("file_errors", {}).items() for reason, lines in reasons.items()]


if __name__ == "__main__":
    sys.exit(main())
