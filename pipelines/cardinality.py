"""python -m pipelines.cardinality --input DIR --counter NAME [--key K] [--period day] --from DATE --to DATE

Merges stored HyperLogLog sketches (the `cardinality/` output of a run, local, s3:// or hdfs://) and prints
the distinct count over a date range: MAU is the union of the daily sketches of a month, not their sum.
"""

from __future__ import annotations

import argparse
import base64
import sys
from collections.abc import Iterator
from datetime import date
from typing import Any

import orjson
from apache_beam.io.filesystems import FileSystems

from connectors.archives import InputError
from connectors.files import join
from pipelines.validation import cli
from transforms.cardinality import DEFAULT_LG_K
from transforms.sketches import Hll


def stored(directory: str) -> Iterator[dict[str, Any]]:
    """Every result line under a `cardinality/` folder."""
    matches = FileSystems.match([join(directory, "*.jsonl")])[0].metadata_list
    for meta in matches:
        with FileSystems.open(meta.path) as f:
            for line in f.read().splitlines():
                if line.strip():
                    yield orjson.loads(line)


def merge(rows: list[dict[str, Any]], lg_k: int = DEFAULT_LG_K) -> Any:
    kind = Hll(lg_k)
    return kind.deserialize(kind.merge(base64.b64decode(row["sketch"]) for row in rows))


def query(directory: str, counter: str, start: date, end: date, period: str = "day",
          key: str | None = None, per_key: bool = False) -> dict[str | None, dict[str, Any]]:
    """Distinct count of `counter` over [start, end] from the sketches of `period`, per key or for one key
    (key None with per_key False: every key together)."""
    picked: dict[str | None, list[dict[str, Any]]] = {}
    for row in stored(directory):
        if row["counter"] != counter or row["period"] != period:
            continue
        if not start.isoformat() <= row["start"] <= end.isoformat():
            continue
        if key is not None and row["key"] != key:
            continue
        picked.setdefault(row["key"] if per_key else key, []).append(row)
    out = {}
    for k, rows in sorted(picked.items(), key=lambda kv: str(kv[0])):
        sketch = merge(rows)
        out[k] = {"sketches": len(rows), "estimate": sketch.get_estimate(),
                  "lower_bound": sketch.get_lower_bound(2), "upper_bound": sketch.get_upper_bound(2)}
    return out


@cli
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.cardinality", description=__doc__.split("\n\n")[1],
                                     allow_abbrev=False)
    parser.add_argument("--input", required=True, metavar="DIR", help="a run's cardinality/ folder")
    parser.add_argument("--counter", required=True)
    parser.add_argument("--from", dest="start", required=True, type=date.fromisoformat, metavar="YYYY-MM-DD")
    parser.add_argument("--to", dest="end", required=True, type=date.fromisoformat, metavar="YYYY-MM-DD")
    parser.add_argument("--period", choices=("day", "week", "month"), default="day",
                        help="which stored sketches to merge (default: day)")
    parser.add_argument("--key", help="one key (e.g. an area); default: all keys together")
    parser.add_argument("--per-key", action="store_true", help="one line per key")
    args = parser.parse_args(argv)
    try:
        results = query(args.input, args.counter, args.start, args.end, args.period, args.key, args.per_key)
    except OSError as err:
        raise InputError(f"cannot read {args.input}: {err}") from None
    if not results:
        print(f"dpipe: no {args.period} sketches of {args.counter!r} between {args.start} and {args.end} "
              f"in {args.input}", file=sys.stderr)
        return 1
    for k, r in results.items():
        who = f" {k}" if k is not None else ""
        print(f"{args.counter}{who} {args.start}..{args.end}: {r['estimate']:,.0f} distinct "
              f"(95%: {r['lower_bound']:,.0f}-{r['upper_bound']:,.0f}; {r['sketches']} {args.period} sketches)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
