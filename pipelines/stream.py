"""python -m pipelines.stream --output DIR [--config FILE] [--spool DIR | --source pubsub --subscription S]

The unbounded entry point: the same pipeline definition as the backfill (`pipelines.graph`), fed by the
gateway's spool (an in-process gateway by default, `--no_gateway` when one runs apart) or by a Pub/Sub
subscription. Outputs are the configured sinks; the embedded file sinks publish one file per bundle.

Runners: Prism (Beam's Go runner, built by `make tools`) for the spool: it fires windows, triggers and timers
while the source runs. Beam's Python Pub/Sub IO runs on the Python DirectRunner (and Dataflow), not on Prism
or Flink, so `--source pubsub` picks the DirectRunner. Prism runs as a child of its own process group, so
a Ctrl-C to the terminal's group reaches this process only, which stops everything in order.

Stop with Ctrl-C or SIGTERM (runbooks/streaming.md): the spool source stops at a batch boundary and records
its position, the runner finishes every bundle in flight, the gateway drains; the next start goes on from that
position, so nothing is lost or read twice. A second signal, or no clean end within `STOP_SECONDS`, cancels
the job instead: lines stay in the spool from the last finalized checkpoint on and are read again.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from pipelines import graph
from pipelines.cluster import check_stream
from pipelines.config import JobConfig, load_config
from pipelines.options import UsageError, beam_options, filesystem_args, setup_logging
from pipelines.validation import cli
from transforms.category import camel_case
from transforms.event import LineBatch

log = logging.getLogger("dpipe.stream")
ROOT = Path(__file__).resolve().parent.parent
PRISM = ROOT / ".tools" / "bin" / "prism"
STOP_SECONDS = 8.0
"""A clean stop waits this long for the job to finish its bundles (systemd's default stop timeout is 90 s)."""
CANCEL_SECONDS = 10.0
"""After a cancel, how long to wait for the runner to confirm it before exiting all the same."""


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m pipelines.stream", allow_abbrev=False,
                                     description="Stream ALS lines from the gateway's spool or Pub/Sub through dpipe.",
                                     epilog="Other options go to Beam. Default runner: Prism (.tools/bin/prism).")
    parser.add_argument("--output", required=True, metavar="DIR", help="where the file sinks write")
    parser.add_argument("--config", metavar="FILE", help="job YAML (its `gateway:` section too)")
    parser.add_argument("--source", choices=("spool", "pubsub"), default="spool")
    parser.add_argument("--spool", metavar="DIR", help="the gateway's spool (default OUTPUT/../spool)")
    parser.add_argument("--spool_url", metavar="URL",
                        help="read the spool at this URL of Beam's filesystems (s3://bucket/spool), where the gateway "
                             "ships sealed segments (a cluster's TaskManagers cannot read the gateway's disk)")
    parser.add_argument("--spool_shared", action="store_true",
                        help="the spool path is a mount every TaskManager sees at the same path")
    parser.add_argument("--no_gateway", action="store_true", help="a gateway runs apart; only read the spool")
    parser.add_argument("--port", type=int, help="the in-process gateway's port (default: the config's, 8080)")
    parser.add_argument("--subscription", metavar="projects/P/subscriptions/S", help="with --source pubsub")
    parser.add_argument("--dashboard_port", type=int, metavar="N",
                        help="serve the live dashboard and /healthz, /status, /metrics on this port (0: any)")
    parser.add_argument("--idle_stop", type=float, metavar="S", help="end after S seconds without input (tests)")
    parser.add_argument("--replay_bytes", type=int, metavar="N",
                        help="spool bytes kept to recompute open windows after a crash (default: half of "
                             "gateway.max_spool_bytes; runbooks/streaming.md)")
    parser.add_argument("--publish_margin", type=float, metavar="S", help=argparse.SUPPRESS)  # tests: a shorter
    # margin than connectors.spool_source.PUBLISH_MARGIN_S, so that a short run moves its replay point
    return parser.parse_known_args(argv)


def stream_options(beam_args: list[str], source: str, job_endpoint: str | None = None) -> PipelineOptions:
    """--streaming, and a local runner that can run this source (pinned: nothing is downloaded)."""
    args = list(beam_args)
    if not any(a.startswith("--runner") for a in args):
        if source == "pubsub":
            args.append("--runner=DirectRunner")
        else:
            args += ["--runner=PrismRunner", f"--prism_location={PRISM}", "--prism_log_level=warn"]
            if not any(a.startswith("--environment_type") for a in args):
                args.append("--environment_type=LOOPBACK")  # else a worker pool of the user's (EXTERNAL)
            if job_endpoint:
                args.append(f"--job_endpoint={job_endpoint}")
    options = beam_options(args)
    options.view_as(StandardOptions).streaming = True
    return options


def uses_local_prism(beam_args: list[str], source: str) -> bool:
    return source == "spool" and not any(a.startswith(("--runner", "--job_endpoint")) for a in beam_args)


class LocalPrism:
    """Prism as this process's child in a process group of its own (a Ctrl-C to the terminal does not kill it
    before the job has stopped), on a free port, stopped by PID."""

    def __init__(self, log_path: Path) -> None:
        if not PRISM.is_file():
            raise UsageError(f"{PRISM} is missing: run `make tools` (builds Beam's Prism runner with Go)")
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._proc = subprocess.Popen(
            [str(PRISM), "--job_port", str(self.port), "--serve_http=false", "--log_level", "warn"],
            stdout=log_path.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
        log_path.with_suffix(".pid").write_text(str(self._proc.pid))
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise UsageError(f"Prism did not start: see {log_path}") from None
                time.sleep(0.05)

    @property
    def endpoint(self) -> str:
        return f"localhost:{self.port}"

    def dead(self) -> int | None:
        """Prism's exit code once it has died, else None."""
        return self._proc.poll()

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def pubsub_batch(message: beam.io.PubsubMessage) -> LineBatch:
    """One message = one line (the gateway's Pub/Sub sink publishes them so); the category is an attribute."""
    category = (message.attributes or {}).get("category")
    error = None if category else "message has no category attribute"
    source = f"pubsub/{message.message_id}"
    return LineBatch(source, source, 0, camel_case(category) if category else None, [0], [message.data], error)


def read_lines(pipeline: beam.Pipeline, args: argparse.Namespace, spool: Path, job: JobConfig) -> beam.PCollection:
    if args.source == "pubsub":
        if not args.subscription:
            raise UsageError("--source pubsub needs --subscription projects/P/subscriptions/S")
        return (pipeline
                | "ReadFromPubSub" >> beam.io.ReadFromPubSub(subscription=args.subscription, with_attributes=True)
                | "AsLines" >> beam.Map(pubsub_batch))
    from connectors.spool_source import ReadFromSpool

    conf = job.stream
    read = pipeline | "ReadFromSpool" >> ReadFromSpool(
        args.spool_url or str(spool), idle_stop_s=args.idle_stop, max_out_of_order_s=conf.max_out_of_order,
        idle_timeout_s=conf.idle_timeout, replay_span_s=replay_span(job),
        replay_bytes=args.replay_bytes if args.replay_bytes is not None else job.gateway.max_spool_bytes // 2,
        **({"publish_margin_s": args.publish_margin} if args.publish_margin is not None else {}))
    return read.lines | "Categories" >> beam.Map(camel_category)


PERIOD_S = {"day": 86_400 + 3_600, "week": 7 * 86_400 + 3_600, "month": 31 * 86_400 + 3_600}
"""A calendar period's longest span in seconds (a day with a daylight-saving change lasts 25 h)."""


def replay_span(job: JobConfig) -> float:
    """Seconds of event time after a line during which a window holding it may still change: the longest
    window an aggregating branch puts a line in, plus that branch's lateness. The spool keeps that much for
    the replay after a crash (connectors/spool_source.py); 0 when no branch aggregates."""
    if not job.routes:
        return 0.0
    spans = [c.interval + c.allowed_lateness for c in job.counters]
    spans += [s.window + s.allowed_lateness for s in job.statistics]
    spans += [max(PERIOD_S[p] for p in c.periods) + c.allowed_lateness for c in job.cardinality]
    spans += [PERIOD_S[f.period] + f.window + f.allowed_lateness for f in (job.funnels if job.behaviour else [])]
    spans += [r.window.size + r.window.allowed_lateness for r in (job.alarms.rules if job.alarms else [])]
    return float(max(spans, default=0.0))


def camel_category(batch: LineBatch) -> LineBatch:
    """The gateway's category names (`mongo_err`) as the archive's (`mongoErr`), as file names give them."""
    return dataclasses.replace(batch, category=camel_case(batch.category)) if batch.category else batch


def build_stream(pipeline: beam.Pipeline, job: JobConfig, args: argparse.Namespace, spool: Path,
                 run: graph.RunContext) -> None:
    graph.build(read_lines(pipeline, args, spool, job), job, run)


def run_stream(args: argparse.Namespace, beam_args: list[str]) -> int:
    job = load_config(args.config)
    spool = Path(args.spool or job.gateway.spool or Path(args.output).parent / "spool")
    prism = LocalPrism(Path(args.output) / "_stream" / "prism.log") if uses_local_prism(beam_args, args.source) \
        else None
    gateway = dashboard = None
    try:
        options = stream_options(beam_args, args.source, prism.endpoint if prism else None)
        check_stream(options, args.source, str(spool), args.spool_url, args.spool_shared)
        FileSystems.set_options(options)
        if args.source == "spool" and not args.no_gateway:
            gateway = start_gateway(args.config, spool, args.port, args.spool_url, filesystem_args(beam_args))
        if args.dashboard_port is not None:
            dashboard = start_dashboard(args, spool, gateway, options)
        return supervise(beam.Pipeline(options=options), job, args, spool, prism, dashboard)
    finally:
        if dashboard is not None:
            dashboard.stop()
        if gateway is not None:
            print("dpipe stream: stopping the gateway", flush=True)
            gateway.stop()
        if prism is not None:
            prism.stop()


class GatewayProcess:
    """The gateway (`python -m pipelines.gateway`) as a child process in a group of its own: it does not share
    the SDK worker's GIL, a Ctrl-C to the terminal reaches only this process, and it is stopped (SIGTERM: it
    drains, then seals its segments) after the job. Its output goes on to this process's stdout."""

    def __init__(self, config: str | None, spool: Path, port: int | None, spool_url: str | None = None,
                 filesystem: list[str] | None = None) -> None:
        command = [sys.executable, "-m", "pipelines.gateway", "--spool", str(spool)]
        command += ["--config", config] if config else []
        command += ["--port", str(port)] if port is not None else []
        command += ["--spool_url", spool_url, *(filesystem or [])] if spool_url else []
        self._proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        assert self._proc.stdout is not None
        last = b""
        for line in self._proc.stdout:
            found = re.search(rb"listening on (http://[^\s,]+)", line)
            if found:
                self.url = found.group(1).decode()
                break
            last = line or last
        else:
            self._proc.wait()
            raise UsageError(f"the gateway did not start: {last.decode(errors='replace').strip()}")
        threading.Thread(target=self._forward, daemon=True, name="gateway-output").start()

    def _forward(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            sys.stdout.write(line.decode(errors="replace"))
            sys.stdout.flush()

    def stop(self, timeout: float = 30) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def start_gateway(config: str | None, spool: Path, port: int | None, spool_url: str | None = None,
                  filesystem: list[str] | None = None) -> GatewayProcess:
    gateway = GatewayProcess(config, spool, port, spool_url, filesystem or [])
    print(f"dpipe stream: gateway on {gateway.url}/v1/logs/{{category}}, spool {spool}", flush=True)
    return gateway


def start_dashboard(args: argparse.Namespace, spool: Path, gateway: GatewayProcess | None,
                    options: PipelineOptions) -> Any:
    """--dashboard_port: the live dashboard and admin API beside the job (connectors.dashboard)."""
    from connectors.dashboard.server import serve_in_thread
    from connectors.dashboard.status import StreamStatus

    status = StreamStatus(options.view_as(StandardOptions).runner or "PrismRunner", args.output,
                          [{"name": args.source, "path": args.subscription or str(spool)}], gateway and gateway.url)
    try:
        dashboard = serve_in_thread(args.output, args.dashboard_port, status)
    except RuntimeError as err:  # the port is taken, or Chart.js is missing (`make setup`)
        raise UsageError(str(err)) from None
    print(f"dpipe stream: dashboard on {dashboard.url}", flush=True)
    return dashboard


def _finished(state: str) -> bool:
    return state.endswith(("DONE", "FAILED", "CANCELLED"))


def supervise(pipeline: beam.Pipeline, job: JobConfig, args: argparse.Namespace, spool: Path,
              prism: LocalPrism | None, dashboard: Any = None) -> int:
    """Run the job until it ends or a signal stops it (module docstring): one line per step, no traceback."""
    from connectors.spool_source import commit_drain, drained, request_drain, reset_drain

    spool_at = args.spool_url or spool  # where the reader finds the spool, and its drain files
    if args.source == "spool":
        reset_drain(spool_at)
    run = graph.RunContext.new(args.output)
    build_stream(pipeline, job, args, spool, run)
    signals: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, _: signals.append(signum))
    threading.excepthook = _quiet_excepthook
    for handler in logging.getLogger().handlers:
        handler.addFilter(_RunnerGone())
    result = pipeline.run()
    if dashboard is not None:
        dashboard.status.result = result
    runner = pipeline.options.view_as(StandardOptions).runner or "PrismRunner"
    print(f"dpipe stream: running on {runner}, output {args.output}", flush=True)
    stop_at = cancelled_at = None
    try:
        while True:
            time.sleep(0.2)  # poll: the portable runner's wait_until_finish cannot be repeated
            if prism is not None and prism.dead() is not None:
                print(f"dpipe stream: the runner (Prism) died with exit code {prism.dead()}: see "
                      f"{prism.log_path}", file=sys.stderr, flush=True)
                return 1
            state = str(result.state)
            if _finished(state):
                break
            if signals and stop_at is None:
                stop_at = time.monotonic() + STOP_SECONDS
                if args.source == "spool":
                    print("dpipe stream: stopping: the source stops at the next batch, bundles in flight finish",
                          flush=True)
                    request_drain(spool_at)
                else:
                    stop_at = time.monotonic()
            if cancelled_at is not None and time.monotonic() - cancelled_at > CANCEL_SECONDS:
                print("dpipe stream: the runner did not confirm the cancel; exiting", flush=True)
                break
            if cancelled_at is None and stop_at is not None and (len(signals) > 1 or time.monotonic() >= stop_at):
                print("dpipe stream: cancelling the job: unfinished lines are read again at the next start",
                      flush=True)
                result.cancel()
                cancelled_at = time.monotonic()
    except Exception as err:  # the job service went away under us: one line, not a traceback
        print(f"dpipe stream: lost the runner: {str(err).splitlines()[0] if str(err) else type(err).__name__}",
              file=sys.stderr, flush=True)
        return 1
    final = str(result.state).rsplit(".", 1)[-1].lower()
    if args.source == "spool" and drained(spool_at) and final == "done":
        commit_drain(spool_at)
        print("dpipe stream: stopped cleanly; the next start goes on from here", flush=True)
    print(f"dpipe stream: {final}", flush=True)
    return 1 if final == "failed" else 0


def _quiet_excepthook(hook: threading.ExceptHookArgs) -> None:
    """The runner's client threads fail loudly when the runner goes away: the supervisor says it in one line."""
    log.debug("%s in thread %s: %s", hook.exc_type.__name__, hook.thread.name if hook.thread else "?",
              hook.exc_value)


class _RunnerGone(logging.Filter):
    """Drops the SDK worker's tracebacks of a connection to the runner that closed (the runner died or the
    job ended): `supervise` reports that once, in one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        import grpc

        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, grpc.RpcError) and error.code() in (
            grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED))


@cli
def main(argv: list[str] | None = None) -> int:
    args, beam_args = parse_args(argv)
    setup_logging()
    return run_stream(args, beam_args)


if __name__ == "__main__":
    sys.exit(main())
