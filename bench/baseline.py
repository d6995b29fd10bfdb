"""The plain-Python baseline of the backfill: the same read + parse + Parquet write, one process, no Beam.

    python -m bench.baseline --input GLOB --output DIR [--config FILE]

It reuses dpipe's pure functions (the range reader, `parse_batch`, `decorate_batch`, `route_batch`,
`event_partitions`; for a job without decorations and routes, `parse_lines` and `archive_rows`, as the graph
does), so the difference with `pipelines.backfill` is exactly what the framework costs or gains.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

import orjson
import pyarrow.parquet as pq

from connectors.archives import FileRange, read_range
from connectors.files import archive_rows, event_partitions, event_schema, row_partitions
from connectors.summary import finish_summary
from pipelines.config import JobConfig, load_config
from transforms.alarms import EMPTY as ALARM_EMPTY
from transforms.alarms import _Selector, evaluate, window_starts
from transforms.alarms import add as alarm_add
from transforms.als import parse_batch, parse_lines
from transforms.cardinality import slots_of as card_slots
from transforms.counters import pre_aggregate
from transforms.decorate import decorate_batch, rule_columns
from transforms.event import tune_gc
from transforms.fields import key_reader, reader
from transforms.route import route_batch
from transforms.sketches import Frequent, Hll, Kll
from transforms.statistics import slots_of as stats_slots


class _Analyses:
    """The analysis branches as plain loops over the same pure functions: counters, cardinality and statistics
    fold into per-slot accumulators and sketches, alarms into per-window accumulators, then evaluate."""

    def __init__(self, job: JobConfig) -> None:
        self.job = job
        self.counters = [(c, c.spec(), {}) for c in job.counters]
        self.sketches = [(c, Hll(c.lg_k), card_slots(c.spec()), {}) for c in job.cardinality]
        self.sketches += [(c, Frequent() if c.top else Kll(), stats_slots(c.spec()), {}) for c in job.statistics]
        rules = job.alarms.rules if job.alarms else []
        self.alarms = [(r, r.spec(), _Selector(r.spec()), {}) for r in rules]

    def add(self, routed: dict) -> None:
        for conf, spec, parts in self.counters:
            get_value = reader(spec.field) if spec.field else None
            pre_aggregate(routed[conf.route], spec, get_value, key_reader(spec.by), parts)
        for conf, kind, slots_of, sketches in self.sketches:
            for event in routed[conf.route].events:
                for slot, value in slots_of(event):
                    if slot not in sketches:
                        sketches[slot] = kind.new()
                    kind.update(sketches[slot], value)
        for conf, spec, selector, windows in self.alarms:
            size, period = spec.size_s * 1000, spec.period_s * 1000
            for event in routed[conf.route].events:
                picked = selector.select(event)
                if picked is not None:
                    key, value = picked
                    for start in window_starts(event.ts, size, period):
                        per_key = windows.setdefault(key, {})
                        per_key[start] = alarm_add(per_key.get(start, ALARM_EMPTY), value, None, spec)

    def results(self) -> dict[str, int]:
        alarms = sum(len(list(evaluate(spec, key, w.items()))) for _, spec, _, ws in self.alarms
                     for key, w in ws.items())
        return {"counters": sum(len(p) for *_, p in self.counters),
                "sketches": sum(len(s) for *_, s in self.sketches), "alarms": alarms}


def run(paths: list[str], output: str, job: JobConfig) -> dict:
    tune_gc()  # as the pipeline's workers do
    rules, namer, routes = job.decorate_rules(), job.index.namer(), job.route_specs()
    schema = event_schema(rule_columns(rules))
    codec = None if job.archive.compression == "none" else job.archive.compression
    writers: dict[str, pq.ParquetWriter] = {}
    counts = {"lines_read": 0, "events": 0, "dead_letters": 0, "files_read": 0}
    decorate_counts: dict[str, int] = {}
    route_counts: dict[str, int] = {}
    analyses = _Analyses(job)
    os.makedirs(os.path.join(output, "deadletter"), exist_ok=True)
    with open(os.path.join(output, "deadletter", "part-0.jsonl"), "wb") as dead_out:
        for path in paths:
            for batch in read_range(FileRange(path, 0, None)):
                counts["lines_read"] += len(batch.lines)
                if rules or routes:
                    events, dead = parse_batch(batch)
                    events, failed = decorate_batch(events, rules, namer, decorate_counts)
                    dead += failed
                    parts, n_events = event_partitions(events, schema), len(events.events)
                else:  # the graph's archive-only path (pipelines/graph.py): columns, no Event objects
                    parsed, dead = parse_lines(batch)
                    n_events = len(parsed.ts)
                    parts = row_partitions(archive_rows(batch, parsed, namer)) if n_events else iter(())
                for partition, _, table in parts:
                    if partition not in writers:
                        target = os.path.join(output, "events", partition, "part-0.parquet")
                        os.makedirs(os.path.dirname(target), exist_ok=True)
                        writers[partition] = pq.ParquetWriter(target, schema, compression=codec)
                    writers[partition].write_table(table)
                if routes:
                    routed = route_batch(events, routes, route_counts)
                    analyses.add(routed)
                counts["events"] += n_events
                counts["dead_letters"] += len(dead)
                dead_out.write(b"".join(orjson.dumps(d.to_dict()) + b"\n" for d in dead))
            counts["files_read"] += 1
    for writer in writers.values():
        writer.close()
    counts.update(analyses.results())
    summary = finish_summary(counts)
    with open(os.path.join(output, "summary.json"), "wb") as f:
        f.write(orjson.dumps(summary))
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline")
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--config")
    args = parser.parse_args()
    run(sorted(glob.glob(args.input)), args.output, load_config(args.config))
    return 0


if __name__ == "__main__":
    sys.exit(main())


def decorated_documents(pattern: str, config: str, route: str, prefix: str) -> list[tuple[str, str, dict]]:
    """The documents a route sends to the search cluster, built with dpipe's pure functions (for bench.index)."""
    job = load_config(config)
    rules, routes = job.decorate_rules(), job.route_specs()
    namer = type(job.index.namer())(prefix, job.index.pattern)
    docs = []
    for path in sorted(glob.glob(pattern)):
        for batch in read_range(FileRange(path, 0, None)):
            events, _ = parse_batch(batch)
            events, _ = decorate_batch(events, rules, namer, {})
            routed = route_batch(events, routes, {})[route]
            docs += [(e.doc_id, e.index, e.document(routed.drop)) for e in routed.events]
    return docs
