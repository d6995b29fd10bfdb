"""Per-op cost of parsing and decoration, in ns per event (like the original README's table).

    python -m bench.decorate [--lines 200000]

Each op runs alone in a tight loop over events of the category it is meant for, taken from a generated
archive (stable per-user addresses, so the GeoIP cache sees what it would in production). The end-to-end
number, parse + every decoration through the pipeline beside a plain loop, is `bench.backfill --config
templates/jobs/engine.als.yaml`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.backfill import archive
from pipelines.config import load_config
from transforms.als import parse_batch, parse_line
from transforms.category import category_from_path
from transforms.decorate import IndexNamer
from transforms.decoration import DelOp, GeoIpOp, MoneyOp, NormalizeOp, RangeOp
from transforms.event import Event, LineBatch, tune_gc
from transforms.keys import doc_id

TEMPLATE = Path(__file__).resolve().parent.parent / "templates" / "jobs" / "engine.als.yaml"


def per_event_ns(items: list, fn: Callable, repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter_ns()
        for item in items:
            fn(item)
        best = min(best, (time.perf_counter_ns() - started) / max(len(items), 1))
    return best


def load(logs: Path, name: str) -> tuple[list[bytes], list[Event]]:
    path = logs / name
    lines = path.read_bytes().split(b"\n")[:-1]
    events, _ = parse_batch(LineBatch(str(path), "s", 0, category_from_path(str(path)), list(range(len(lines))), lines))
    return lines, events.events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.decorate")
    parser.add_argument("--lines", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    tune_gc()
    logs, _ = archive(args.lines, 4)
    pv_lines, pv = load(logs, "pv.0.log")
    _, payments = load(logs, "payment.0.log")
    _, errors = load(logs, "error.0.log")
    ops = {op.name: op for rule in load_config(TEMPLATE).decorate_rules() for op in rule.ops}
    geoip: GeoIpOp = ops["geoip"]
    ranges: RangeOp = ops["range"]
    money: MoneyOp = ops["money"]
    normalize: NormalizeOp = ops["normalize"]
    delete = DelOp(["trace", "_log_info.script_id"])
    namer = IndexNamer("rs", "@ym")
    names = [p.name for p in logs.iterdir()] * 1000
    uncached = category_from_path.__wrapped__

    def fresh(events: list[Event]) -> list[Event]:
        for e in events:
            e.decor = {}
        return events

    geoip.apply(fresh(pv)[0], {})  # open the database outside the measurement
    rows = [
        ("camel-case name (uncached; dpipe caches per file)", per_event_ns(names, uncached)),
        ("parse line (split, timestamp, orjson)", per_event_ns(pv_lines, lambda b: parse_line(b, "f", 0, "pv"))),
        ("index name (@ym, cached per day)", per_event_ns(pv, lambda e: namer(e.ts))),
        ("document id (blake2b of source, offset, line)",
         per_event_ns(pv, lambda e: doc_id(e.source, e.offset, e.raw))),
        ("geoip (ip, _log_info.ip; LRU-cached lookups)", per_event_ns(fresh(pv), lambda e: geoip.apply(e, {}))),
        ("range (level, lv, _log_info.level)", per_event_ns(fresh(pv), lambda e: ranges.apply(e, {}))),
        ("money (data.amount, data.currency)", per_event_ns(fresh(payments), lambda e: money.apply(e, {}))),
        ("normalize (message, msg; 5 patterns)", per_event_ns(fresh(errors), lambda e: normalize.apply(e, {}))),
        ("del (trace, _log_info.script_id; path copy)", per_event_ns(pv, lambda e: delete.apply(e, {}))),
    ]
    print(f"\nper-op cost, ns per event ({len(pv):,} pv, {len(payments):,} payment, {len(errors):,} error events)\n")
    print("| op | ns/event |")
    print("|---|---:|")
    for name, ns in rows:
        print(f"| {name} | {ns:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
