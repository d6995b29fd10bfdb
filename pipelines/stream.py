"""python -m pipelines.stream --output DIR [--config FILE] [--spool DIR | --source pubsub --subscription S]

The unbounded entry point: the same pipeline definition as the backfill (`pipelines.graph`), fed by the
gateway's spool (an in-process gateway by default, `--no_gateway` when one runs apart) or by a Pub/Sub
subscription. Outputs are the configured sinks; the embedded file sinks publish one file per bundle.

Runners: Prism (Beam's Go runner, built by `make tools`) for the spool: it fires windows, triggers and timers
while the source runs. Beam's Python Pub/Sub IO runs on the Python DirectRunner (and Dataflow), not on Prism
or Flink, so `--source pubsub` picks the DirectRunner. Stop with Ctrl-C or SIGTERM: the pipeline is
cancelled and the gateway drains; lines the gateway acknowledged stay in the spool until the source's
checkpoint covering them is finalized, so a restart goes on where the last one stopped.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import threading
from pathlib import Path

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from connectors.archives import InputError
from pipelines import graph
from pipelines.config import ConfigError, JobConfig, load_config
from pipelines.options import UsageError, beam_options, setup_logging
from transforms.category import camel_case
from transforms.event import LineBatch

log = logging.getLogger("dpipe.stream")
ROOT = Path(__file__).resolve().parent.parent
PRISM = ROOT / ".tools" / "bin" / "prism"


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m pipelines.stream", allow_abbrev=False,
                                     description="Stream ALS lines from the gateway's spool or Pub/Sub through dpipe.",
                                     epilog="Other options go to Beam. Default runner: Prism (.tools/bin/prism).")
    parser.add_argument("--output", required=True, metavar="DIR", help="where the file sinks write")
    parser.add_argument("--config", metavar="FILE", help="job YAML (its `gateway:` section too)")
    parser.add_argument("--source", choices=("spool", "pubsub"), default="spool")
    parser.add_argument("--spool", metavar="DIR", help="the gateway's spool (default OUTPUT/../spool)")
    parser.add_argument("--no_gateway", action="store_true", help="a gateway runs apart; only read the spool")
    parser.add_argument("--port", type=int, help="the in-process gateway's port (default: the config's, 8080)")
    parser.add_argument("--subscription", metavar="projects/P/subscriptions/S", help="with --source pubsub")
    parser.add_argument("--dashboard_port", type=int, metavar="N",
                        help="serve the live dashboard and /healthz, /status, /metrics on this port (0: any)")
    parser.add_argument("--idle_stop", type=float, metavar="S", help="end after S seconds without input (tests)")
    return parser.parse_known_args(argv)


def stream_options(beam_args: list[str], source: str) -> PipelineOptions:
    """--streaming, and a local runner that can run this source (pinned: nothing is downloaded)."""
    args = list(beam_args)
    if not any(a.startswith("--runner") for a in args):
        if source == "pubsub":
            args.append("--runner=DirectRunner")
        else:
            if not PRISM.is_file():
                raise UsageError(f"{PRISM} is missing: run `make tools` (builds Beam's Prism runner with Go)")
            args += ["--runner=PrismRunner", f"--prism_location={PRISM}", "--environment_type=LOOPBACK",
                     "--prism_log_level=warn"]
    options = beam_options(args)
    options.view_as(StandardOptions).streaming = True
    return options


def pubsub_batch(message: beam.io.PubsubMessage) -> LineBatch:
    """One message = one line (the gateway's Pub/Sub sink publishes them so); the category is an attribute."""
    category = (message.attributes or {}).get("category")
    error = None if category else "message has no category attribute"
    source = f"pubsub/{message.message_id}"
    return LineBatch(source, source, 0, camel_case(category) if category else None, [0], [message.data], error)


def read_lines(pipeline: beam.Pipeline, args: argparse.Namespace, spool: Path) -> beam.PCollection:
    if args.source == "pubsub":
        if not args.subscription:
            raise UsageError("--source pubsub needs --subscription projects/P/subscriptions/S")
        return (pipeline
                | "ReadFromPubSub" >> beam.io.ReadFromPubSub(subscription=args.subscription, with_attributes=True)
                | "AsLines" >> beam.Map(pubsub_batch))
    from connectors.spool_source import ReadFromSpool

    read = pipeline | "ReadFromSpool" >> ReadFromSpool(str(spool), idle_stop_s=args.idle_stop)
    return read.lines | "Categories" >> beam.Map(camel_category)


def camel_category(batch: LineBatch) -> LineBatch:
    """The gateway's category names (`mongo_err`) as the archive's (`mongoErr`), as file names give them."""
    return dataclasses.replace(batch, category=camel_case(batch.category)) if batch.category else batch


def build_stream(pipeline: beam.Pipeline, job: JobConfig, args: argparse.Namespace, spool: Path,
                 run: graph.RunContext) -> None:
    graph.build(read_lines(pipeline, args, spool), job, run)


def run_stream(args: argparse.Namespace, beam_args: list[str]) -> int:
    job = load_config(args.config)
    options = stream_options(beam_args, args.source)
    FileSystems.set_options(options)
    spool = Path(args.spool or job.gateway.spool or Path(args.output).parent / "spool")
    gateway = None
    if args.source == "spool" and not args.no_gateway:
        from pipelines.gateway import GatewayThread

        port = {"port": args.port} if args.port is not None else {}
        settings = job.gateway.model_copy(update={"spool": spool, **port})
        try:
            gateway = GatewayThread(settings).start()
        except RuntimeError as err:  # the port is taken, the spool is in use or not writable
            raise UsageError(str(err)) from None
        print(f"dpipe stream: gateway on {gateway.url}/v1/logs/{{category}}, spool {spool}", flush=True)
    dashboard, status = None, None
    if args.dashboard_port is not None:
        from connectors.dashboard import StreamStatus, serve_in_thread

        status = StreamStatus(options.view_as(StandardOptions).runner, args.output,
                              [{"name": args.source, "path": args.subscription or str(spool)}], gateway)
        try:
            dashboard = serve_in_thread(args.output, args.dashboard_port, status)
        except Exception as err:  # the port is taken, Chart.js is missing (`make setup`)
            if gateway is not None:
                gateway.stop()
            raise UsageError(str(err)) from None
        print(f"dpipe stream: dashboard on {dashboard.url}", flush=True)
    run = graph.RunContext.new(args.output)
    pipeline = beam.Pipeline(options=options)
    build_stream(pipeline, job, args, spool, run)
    result = pipeline.run()
    if status is not None:
        status.result = result
    print(f"dpipe stream: running on {options.view_as(StandardOptions).runner}, output {args.output}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):  # poll the state: the portable runner's wait_until_finish cannot be repeated
            if str(result.state).endswith(("DONE", "FAILED", "CANCELLED")):
                break
    finally:
        if stop.is_set():
            result.cancel()
        if gateway is not None:
            gateway.stop()
        if dashboard is not None:
            dashboard.stop()
    final = str(result.state)
    print(f"dpipe stream: {final.lower()}", flush=True)
    return 1 if "FAILED" in final else 0


def main(argv: list[str] | None = None) -> int:
    args, beam_args = parse_args(argv)
    setup_logging()
    try:
        return run_stream(args, beam_args)
    except (ConfigError, InputError, UsageError) as err:
        print(f"dpipe: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
