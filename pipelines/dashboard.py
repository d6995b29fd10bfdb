"""python -m pipelines.dashboard --output DIR [--port N] [--host 127.0.0.1] [--write]

The dashboard over the outputs of any backfill or stream, with no server but itself: the pages, and the
admin API over what the files hold (`/status`, `/healthz`, `/metrics`). It re-reads changed files at every
refresh, so it follows a stream's output folder too. `--write` only (re)writes DIR/report.html and exits.
Prints `dpipe dashboard on http://HOST:PORT` once it accepts; SIGTERM or Ctrl-C stop it, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from connectors.dashboard.data import load
from connectors.dashboard.render import write_report
from connectors.dashboard.server import Dashboard, serve
from pipelines.options import setup_logging
from pipelines.validation import UsageError, cli

DEFAULT_PORT = 8090


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.dashboard", allow_abbrev=False,
                                     description="Serve dpipe's dashboard over a backfill's or a stream's outputs.")
    parser.add_argument("--output", required=True, metavar="DIR", help="the --output folder of a backfill or stream")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default %(default)s; 0: any free one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s)")
    parser.add_argument("--write", action="store_true", help="write DIR/report.html and exit")
    args = parser.parse_args(argv)
    setup_logging()
    if not Path(args.output).is_dir():
        raise UsageError(f"--output {args.output}: no such folder")
    if args.write:  # without the chart library (`make setup`): MissingChartLibrary, a UserError
        print(write_report(args.output, load(args.output)))
        return 0
    dashboard = Dashboard(args.output)

    def ready(port: int) -> None:
        print(f"dpipe dashboard on http://{args.host}:{port}", flush=True)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(dashboard, args.host, args.port, stop, ready)

    try:
        asyncio.run(run())
    except OSError as err:  # the port is taken, the address is not ours
        print(f"dpipe: dashboard: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
