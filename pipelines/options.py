"""Command-line plumbing shared by the entry points: Beam options with safe local defaults, clear usage errors."""

from __future__ import annotations

import logging

from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from pipelines.validation import UsageError

LOCAL_RUNNERS = {"FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner"}
DEFAULT_RUNNER = "FnApiRunner"
"""Pinned: Beam's DirectRunner would otherwise try to download Prism at run time."""


def beam_options(beam_args: list[str], workers: int | None = None) -> PipelineOptions:
    """PipelineOptions from the arguments dpipe did not consume; unknown flags are an error, not a warning."""
    from pipelines import cluster  # here, not at the top: it declares Flink's options

    cluster.check_flink_version(beam_args)
    known = set(PipelineOptions([]).get_all_options())
    given = PipelineOptions(beam_args).get_all_options(retain_unknown_options=True)
    unknown = sorted(set(given) - known)
    if unknown:
        raise UsageError(f"unknown option{'s' if len(unknown) > 1 else ''}: " + ", ".join(f"--{u}" for u in unknown))
    options = PipelineOptions(beam_args)
    standard = options.view_as(StandardOptions)
    if not standard.runner:
        standard.runner = DEFAULT_RUNNER
    if workers is not None:
        if workers < 1:
            raise UsageError("--workers must be at least 1")
        if standard.runner not in LOCAL_RUNNERS:
            raise UsageError(f"--workers is for the local runner; size {standard.runner} with its own options")
        direct = options.view_as(DirectOptions)
        direct.direct_num_workers = workers
        direct.direct_running_mode = "multi_processing" if workers > 1 else "in_memory"
    cluster.check_flink(options)
    return options


def setup_logging() -> None:
    """dpipe's own progress at INFO; Beam's chatter only from WARNING up."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_beam_root_chatter)


def _beam_root_chatter(record: logging.LogRecord) -> bool:
    """Beam's filesystems log each listing on the root logger at INFO ("Finished listing 2 files"): a spool
    read through them would print one every poll."""
    return record.levelno >= logging.WARNING or record.name != "root" or "apache_beam" not in record.pathname


FILESYSTEM_FLAGS = ("--s3_", "--hdfs_", "--gcs_", "--azure_", "--blob_")
"""Beam's filesystem options the gateway takes for its shipper (`--spool_url`)."""


def filesystem_args(args: list[str]) -> list[str]:
    """The filesystem flags (with their values) of Beam-style arguments, for the gateway's shipper."""
    out: list[str] = []
    for n, arg in enumerate(args):
        if arg.startswith(FILESYSTEM_FLAGS):
            out.append(arg)
            if "=" not in arg and n + 1 < len(args) and not args[n + 1].startswith("-"):
                out.append(args[n + 1])
    return out
