"""HyperLogLog choice: Apache DataSketches HLL against the `hyperloglog` package, measured side by side.

    python -m bench.hll [--distinct 1000000]

Update speed (ns per value), merge speed (ms per union of two full sketches), serialized size, and the
error on N distinct ids, at comparable precision: DataSketches lg_k=14 (dpipe's default, 16384 registers)
and hyperloglog error_rate 0.01 (also 16384 registers).
"""

from __future__ import annotations

import argparse
import pickle
import sys
import time

import hyperloglog

from transforms.sketches import Hll


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hll")
    parser.add_argument("--distinct", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    n = args.distinct
    ids = [str(i) for i in range(n)]
    half = n // 2
    rows = []

    kind = Hll(14)
    a, b = kind.new(), kind.new()
    started = time.perf_counter()
    for v in ids[:half]:
        a.update(v)
    for v in ids[half:]:
        b.update(v)
    update_ns = (time.perf_counter() - started) / n * 1e9
    blobs = [kind.serialize(a), kind.serialize(b)]
    started = time.perf_counter()
    merged = kind.deserialize(kind.merge(blobs))
    merge_ms = (time.perf_counter() - started) * 1000
    rows.append(("Apache DataSketches HLL (lg_k 14, HLL_6)", update_ns, merge_ms, len(kind.serialize(merged)),
                 merged.get_estimate()))

    x, y = hyperloglog.HyperLogLog(0.01), hyperloglog.HyperLogLog(0.01)
    started = time.perf_counter()
    for v in ids[:half]:
        x.add(v)
    for v in ids[half:]:
        y.add(v)
    update_ns = (time.perf_counter() - started) / n * 1e9
    started = time.perf_counter()
    z = pickle.loads(pickle.dumps(x))
    z.update(y)
    merge_ms = (time.perf_counter() - started) * 1000
    rows.append(("hyperloglog 0.1.8 (error_rate 0.01)", update_ns, merge_ms, len(pickle.dumps(z)), len(z)))

    print(f"\n{n:,} distinct ids, two sketches of half each, then their union\n")
    print("| sketch | update ns/value | merge ms | serialized bytes | estimate | error |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, upd, mrg, size, est in rows:
        print(f"| {name} | {upd:,.0f} | {mrg:.2f} | {size:,} | {est:,.0f} | {abs(est - n) / n:.2%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
