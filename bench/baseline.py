"""The plain-Python baseline of the backfill: the same read + parse + Parquet write, one process, no Beam.

    python -m bench.baseline --input GLOB --output DIR

It reuses dpipe's pure functions (the range reader, `parse_batch`, `event_partitions`), so the difference
with `pipelines.backfill` is exactly what the framework costs or gains.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

import orjson
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from connectors.archives import FileRange, iter_line_blocks
from connectors.files import EVENT_SCHEMA, event_partitions
from connectors.summary import finish_summary
from transforms.als import parse_batch
from transforms.category import UnknownCategory, category_from_path
from transforms.event import LineBatch, tune_gc


def run(paths: list[str], output: str) -> dict:
    tune_gc()  # as the pipeline's workers do
    writers: dict[str, pq.ParquetWriter] = {}
    counts = {"lines_read": 0, "events": 0, "dead_letters": 0, "files_read": 0}
    os.makedirs(os.path.join(output, "deadletter"), exist_ok=True)
    with open(os.path.join(output, "deadletter", "part-0.jsonl"), "wb") as dead_out:
        for path in paths:
            rng = FileRange(path, 0, None)
            try:
                category, error = category_from_path(path), None
            except UnknownCategory as err:
                category, error = None, str(err)
            with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as stream:
                for seq, (offsets, lines) in enumerate(iter_line_blocks(stream)):
                    counts["lines_read"] += len(lines)
                    batch = LineBatch(path, rng.shard, seq, category, offsets, lines, error)
                    events, dead = parse_batch(batch)
                    for partition, _, table in event_partitions(events):
                        if partition not in writers:
                            target = os.path.join(output, "events", partition, "part-0.parquet")
                            os.makedirs(os.path.dirname(target), exist_ok=True)
                            writers[partition] = pq.ParquetWriter(target, EVENT_SCHEMA, compression="zstd")
                        writers[partition].write_table(table)
                    counts["events"] += len(events.events)
                    counts["dead_letters"] += len(dead)
                    dead_out.write(b"".join(orjson.dumps(d.to_dict()) + b"\n" for d in dead))
            counts["files_read"] += 1
    for writer in writers.values():
        writer.close()
    summary = finish_summary(counts)
    with open(os.path.join(output, "summary.json"), "wb") as f:
        f.write(orjson.dumps(summary))
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline")
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    run(sorted(glob.glob(args.input)), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
