"""python -m pipelines.collect --config FILE

Tails the log files of this server and ships their lines to the gateway (connectors/collector/), one process
per server. templates/collector/collector.yaml documents the config; runbooks/collector.md how to run it.
Logs `collector: metrics on http://HOST:PORT/metrics` once it serves. SIGTERM or SIGINT: stop reading, wait
up to `shutdown_timeout` for the answers to what was sent, write the checkpoint, exit 0. SIGUSR1: log the
status line now. Exit 2 on a config mistake (one line per problem, naming the file and key).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from connectors.collector.agent import Collector
from connectors.collector.config import load_collector_config
from pipelines.validation import cli


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.collect", allow_abbrev=False,
                                     description="Tail log files and ship their lines to the dpipe gateway.")
    parser.add_argument("--config", required=True, metavar="FILE", help="collector YAML (templates/collector/)")
    parser.add_argument("--check", action="store_true", help="validate the config and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = load_collector_config(args.config)
    if args.check:
        print(f"dpipe: {args.config}: ok, {len(config.sources)} sources, gateways {', '.join(config.gateways.urls)}")
        return 0

    async def run() -> None:
        collector = Collector(config)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, collector.stop)
        loop.add_signal_handler(signal.SIGUSR1, collector.log_status)
        await collector.run()

    try:
        asyncio.run(run())  # a broken checkpoint file is a ConfigError
    except OSError as err:  # e.g. the metrics port is taken, the checkpoint folder not writable
        print(f"dpipe: collector: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
