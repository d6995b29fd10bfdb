"""python -m pipelines.gateway --spool DIR [--host 127.0.0.1] [--port 8080] [--config job.yaml]

Runs the HTTP gateway (`connectors/gateway/`: the API in `api.py`, the settings in `settings.py`) in front
of a spool directory. Prints `dpipe gateway listening on http://HOST:PORT` once it accepts (with --port 0, the
port the system chose). SIGTERM or SIGINT: new posts get 503, those in flight get `drain_seconds` (5 s) to
finish and are then cut off unacknowledged, the spool is fsynced and sealed, exit 0; one line per step on
stderr, no traceback. A config or command-line mistake is one line, exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from connectors.gateway.server import GatewayServer
from connectors.gateway.service import serve
from connectors.gateway.settings import load_settings
from connectors.gateway.spool import LineSink, SinkError
from pipelines.options import FILESYSTEM_FLAGS, setup_logging
from pipelines.validation import ConfigError, UsageError, cli


def _seconds(text: str) -> float | str:
    """A number of seconds, or a duration with its unit (`5s`, `1m`) for the settings to check."""
    try:
        return float(text)
    except ValueError:
        return text


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.gateway", allow_abbrev=False,
                                     description="Accept ALS lines over HTTP and make them durable in a spool.")
    parser.add_argument("--spool", metavar="DIR", help="spool directory (or gateway.spool in --config)")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8080; 0: any free port)")
    parser.add_argument("--config", metavar="FILE", help="job YAML; its gateway: section is used")
    parser.add_argument("--tls_cert", metavar="PEM", help="serve HTTPS with this certificate (chain)")
    parser.add_argument("--tls_key", metavar="PEM", help="the certificate's private key file")
    parser.add_argument("--drain_seconds", type=_seconds, metavar="DURATION",
                        help="on SIGTERM/SIGINT, how long requests in flight may take to finish (default 5s)")
    parser.add_argument("--pubsub_topic", metavar="projects/P/topics/T",
                        help="publish to this Pub/Sub topic (attribute `category`) instead of the spool")
    parser.add_argument("--spool_url", metavar="URL",
                        help="ship sealed segments to this URL of Beam's filesystems (s3://bucket/spool), where "
                             "the stream's workers read them; the filesystem's own flags (--s3_endpoint_url, "
                             "--hdfs_host...) follow as Beam takes them")
    args, rest = parser.parse_known_args(argv)
    unknown = [arg for arg in rest if arg.startswith("-") and not arg.startswith(FILESYSTEM_FLAGS)]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    setup_logging()
    sink: LineSink | None = None
    settings = load_settings(args.config, spool=args.spool, host=args.host, port=args.port,
                             tls_cert=args.tls_cert, tls_key=args.tls_key, drain_seconds=args.drain_seconds,
                             spool_url=args.spool_url)
    if settings.spool_url is not None:
        from apache_beam.io.filesystems import FileSystems
        from apache_beam.options.pipeline_options import PipelineOptions

        FileSystems.set_options(PipelineOptions(rest))
    if args.pubsub_topic:
        from connectors.gateway.pubsub import PubSubSink

        try:
            sink = PubSubSink(args.pubsub_topic)
        except ValueError as err:
            raise UsageError(f"--pubsub_topic: {err}") from None
    elif settings.spool is None:
        raise ConfigError("no spool directory: pass --spool DIR or set gateway.spool in --config")

    servers: list[GatewayServer] = []

    def ready(server: GatewayServer) -> None:
        servers.append(server)
        scheme = "https" if settings.tls_cert else "http"
        print(f"dpipe gateway listening on {scheme}://{settings.host}:{server.port}", flush=True)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def stopping(signum: int) -> None:
            print(f"dpipe gateway: {signal.Signals(signum).name}: stopping", file=sys.stderr, flush=True)
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping, signum)
        await serve(settings, stop, ready, sink)

    try:
        asyncio.run(run())
    except (OSError, SinkError) as err:  # e.g. the port is taken, the spool is in use or not writable
        print(f"dpipe: gateway: {err}", file=sys.stderr)
        return 1
    return 0 if servers and servers[0].sink.healthy() else 1  # a dead writer may have left lines unsealed


if __name__ == "__main__":
    sys.exit(main())
