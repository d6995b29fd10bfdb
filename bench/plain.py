"""The loop a user would write instead of dpipe: split each line, check the timestamp, validate the JSON with
orjson, write area/ts/payload to one Parquet file; bad lines are only counted. No ids, dates, partitions or
dead letters, and no Beam (not even imported: its import is part of what dpipe costs).

    python -m bench.plain --input GLOB --output DIR
"""

from __future__ import annotations

import argparse
import glob
import gzip
import os
import sys
from collections.abc import Iterator

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema([("area", pa.string()), ("ts", pa.int64()), ("payload", pa.string())])
BLOCK = 4 << 20


def blocks(path: str) -> Iterator[list[bytes]]:
    """A file's lines, a block of about 4 MiB at a time (.gz decompressed)."""
    with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as f:
        tail = b""
        while block := f.read(BLOCK):
            lines = (tail + block).split(b"\n")
            tail = lines.pop()
            yield lines
        if tail:
            yield [tail]


def run(paths: list[str], output: str) -> dict[str, int]:
    counts = {"lines_read": 0, "events": 0, "dead_letters": 0, "files_read": 0}
    os.makedirs(output, exist_ok=True)
    loads, error = orjson.loads, orjson.JSONDecodeError
    with pq.ParquetWriter(os.path.join(output, "events.parquet"), SCHEMA, compression="zstd") as writer:
        for path in paths:
            for lines in blocks(path):
                areas, stamps, payloads = [], [], []
                for line in lines:
                    parts = line.split(b",", 2)
                    if len(parts) == 3 and parts[0] and parts[1].isdigit():
                        try:
                            fields = loads(parts[2])
                        except error:
                            continue
                        if type(fields) is dict:
                            areas.append(parts[0])
                            stamps.append(int(parts[1]))
                            payloads.append(parts[2])
                counts["lines_read"] += len(lines)
                counts["events"] += len(areas)
                counts["dead_letters"] += len(lines) - len(areas)
                writer.write_table(pa.table([pa.array(areas, pa.string()), pa.array(stamps, pa.int64()),
                                             pa.array(payloads, pa.string())], schema=SCHEMA))
            counts["files_read"] += 1
    with open(os.path.join(output, "summary.json"), "wb") as f:
        f.write(orjson.dumps(counts))
    return counts


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.plain")
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    run(sorted(glob.glob(args.input)), args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
