"""python -m pipelines.gateway --spool DIR [--host 127.0.0.1] [--port 8080] [--config job.yaml]

Runs the HTTP gateway in front of a spool directory (see connectors/gateway/server.py for the API). Prints
`dpipe gateway listening on http://HOST:PORT` once it accepts (with --port 0, the port the system chose).
SIGTERM or SIGINT: new posts get 503, those in flight get `drain_seconds` (5 s) to finish and are then cut
off unacknowledged, the spool is fsynced and sealed, exit 0; one line per step on stderr, no traceback.

In-process use (pipelines.stream): `serve(settings, stop, ready)` in a loop of your own, or `GatewayThread`.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from connectors.gateway.server import GatewayServer, GatewaySettings, TokenSettings
from connectors.gateway.spool import LineSink, SinkError
from pipelines.options import setup_logging


class SettingsError(Exception):
    """A config mistake, phrased for the user: file, key path, what was expected."""


def load_settings(config: str | None, **overrides: Any) -> GatewaySettings:
    """The `gateway:` section of a job config (all defaults without one), with the command line's overrides."""
    data: dict[str, Any] = {}
    if config is not None:
        try:
            job = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise SettingsError(f"{config}: cannot read the config: {err}") from None
        if not isinstance(job, dict) or not isinstance(job.get("gateway", {}), dict):
            raise SettingsError(f"{config}: gateway: expected a mapping of gateway settings")
        data = dict(job.get("gateway") or {})
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return GatewaySettings.model_validate(data)
    except ValidationError as err:
        raise SettingsError("\n".join(f"{config or '<command line>'}: {_explain(e)}" for e in err.errors())) from None


def _explain(error: Any) -> str:
    loc = error["loc"]
    path = ".".join(["gateway", *(str(p) for p in loc)])
    if error["type"] == "extra_forbidden":
        model = TokenSettings if loc[0] == "tokens" else GatewaySettings
        return f"{path}: unknown key; expected one of: {', '.join(model.model_fields)}"
    given = repr(error.get("input")) if loc[-1] != "token" else ""  # never echo a secret
    return f"{path}: {error['msg'].removeprefix('Value error, ')}" + (f"; got {given}" if 0 < len(given) <= 60 else "")


async def serve(settings: GatewaySettings, stop: asyncio.Event,
                ready: Callable[[GatewayServer], None] | None = None, sink: LineSink | None = None) -> None:
    """Serve until `stop` is set, then drain and close the sink. `ready(server)` is called once it accepts
    (`server.port` is the bound port). The sink defaults to a SpoolWriter on `settings.spool`."""
    server = GatewayServer(settings, sink)
    await server.start()
    try:
        if ready is not None:
            ready(server)
        await stop.wait()
    finally:
        await server.stop()


class GatewayThread:
    """The gateway in a thread with its own event loop: `start()` returns once it accepts; `stop()` drains."""

    def __init__(self, settings: GatewaySettings, sink: LineSink | None = None) -> None:
        self.settings = settings
        self.sink = sink
        self.server: GatewayServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="dpipe-gateway", daemon=True)

    @property
    def url(self) -> str:
        assert self.server is not None, "not started"
        return f"http://{self.settings.host}:{self.server.port}"

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await serve(self.settings, self._stop, self._started, self.sink)

        try:
            asyncio.run(main())
        except BaseException as err:
            self._error = err
            self._ready.set()

    def _started(self, server: GatewayServer) -> None:
        self.server = server
        self._ready.set()

    def start(self, timeout: float = 30) -> GatewayThread:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"the gateway did not start within {timeout} s")
        if self._error is not None:
            raise RuntimeError(f"the gateway failed to start: {self._error}") from self._error
        return self

    def stop(self, timeout: float = 60) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> GatewayThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.gateway", allow_abbrev=False,
                                     description="Accept ALS lines over HTTP and make them durable in a spool.")
    parser.add_argument("--spool", metavar="DIR", help="spool directory (or gateway.spool in --config)")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8080; 0: any free port)")
    parser.add_argument("--config", metavar="FILE", help="job YAML; its gateway: section is used")
    parser.add_argument("--tls_cert", metavar="PEM", help="serve HTTPS with this certificate (chain)")
    parser.add_argument("--tls_key", metavar="PEM", help="the certificate's private key file")
    parser.add_argument("--drain_seconds", type=float, metavar="S",
                        help="on SIGTERM/SIGINT, how long requests in flight may take to finish (default 5)")
    parser.add_argument("--pubsub_topic", metavar="projects/P/topics/T",
                        help="publish to this Pub/Sub topic (attribute `category`) instead of the spool")
    args = parser.parse_args(argv)
    setup_logging()
    sink: LineSink | None = None
    try:
        settings = load_settings(args.config, spool=args.spool, host=args.host, port=args.port,
                                 tls_cert=args.tls_cert, tls_key=args.tls_key, drain_seconds=args.drain_seconds)
        if args.pubsub_topic:
            from connectors.pubsub import PubSubSink

            try:
                sink = PubSubSink(args.pubsub_topic)
            except ValueError as err:
                raise SettingsError(f"--pubsub_topic: {err}") from None
        elif settings.spool is None:
            raise SettingsError("no spool directory: pass --spool DIR or set gateway.spool in --config")
        try:
            settings.ssl_context()  # a bad certificate or key is a config mistake, said before listening
        except ValueError as err:
            raise SettingsError(f"{args.config or '<command line>'}: {err}") from None
    except SettingsError as err:
        print(f"dpipe: {err}", file=sys.stderr)
        return 2

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
