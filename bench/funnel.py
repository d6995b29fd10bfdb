"""Funnel cost: `FunnelCounts` on the local runner beside a plain-Python loop and the brute-force definition.

    python -m bench.funnel [--users 20000] [--days 30] [--seed 1]

A generated month of behaviour rows: users' activity is skewed (sessions per user log-normal: the median user
has a couple of dozen rows, the heaviest a few thousand), most rows are no funnel step (pv, search), and the
funnel is visit -> cart -> pay (category payment) within 1 day, per day and area (6 values), order any; one
more row of the table runs order strict.

- Beam: BehaviourBatches of 2000 rows through `beam.Create` -> `FunnelCounts` -> a text file, on the pinned
  FnApiRunner (bounded). The same pipeline on a 100-row input is its startup overhead; the difference divided
  by the rows is the per-row cost. A third run with the same input and sink but only a row count in between
  shows what the input alone costs: Create pickles its encoded elements into the pipeline (bz2-compressed),
  so it is a large share of the first row, a share a file source would not have.
- plain loop: the same work with the same pure functions in one loop: keep each user's step rows in a dict,
  `user_depths` per user, sum `increments` per slot. The practical limit of one core.
- brute force: `reference_depths` (the definition) on all of each user's rows. It is quadratic in a user's step
  rows within one window, so skewed but human activity barely shows it; `--brute-users N` limits it to the
  first N users if a heavier generator makes it too slow.

All three must give identical users per (funnel, period, start, dimensions, step); the benchmark asserts it.
Everything runs in this process (FnApiRunner's in-memory mode), so peak RSS from getrusage is the process's
high-water mark: the Beam row shows how far the pipeline raised it above the generated rows already in memory.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from transforms.behaviour import BehaviourBatch, BehaviourRow
from transforms.funnel import FunnelCounts, FunnelSpec, StepSpec, increments, reference_depths, user_depths

RUNNER = "FnApiRunner"  # pinned: the default DirectRunner would try to download Prism
T0 = 1_388_534_400_000  # 2014-01-01 00:00 UTC
DAY = 86_400_000
AREAS = ("us", "fr", "de", "th", "br", "jp")
BATCH = 2000
Counts = dict[tuple[str, str, str, tuple[str, ...], str], int]  # (funnel, period, start, dims, step) -> users


def funnel(order: str) -> FunnelSpec:
    pay = StepSpec("pay", "pay", (("category", ("payment",)),))
    steps = (StepSpec("visit", "visit"), StepSpec("cart", "cart"), pay)
    return FunnelSpec(f"shop-{order}", steps, DAY, order, ("area",), "day")


def generate(users: int, days: int, seed: int) -> list[BehaviourRow]:
    """Sessions at random times of the month, a few rows each, ~40 s apart (3% share the previous row's ms).

    Per user: a home area (5% of sessions elsewhere), a number of sessions (log-normal, capped at 500) and a
    propensity to buy. A session opens with a visit 60% of the time; its rows are mostly pv and search."""
    rng = random.Random(seed)
    rows = []
    span = days * DAY
    for u in range(users):
        user, home, buyer = f"u{u:06d}", rng.choice(AREAS), rng.random()
        cart, pay = 0.85 + 0.12 * buyer, 0.85 + 0.17 * buyer
        for _ in range(min(500, max(1, int(rng.lognormvariate(1.5, 1.4))))):
            t = T0 + rng.randrange(span)
            area = home if rng.random() < 0.95 else rng.choice(AREAS)
            for i in range(1 + int(rng.expovariate(1 / 5))):
                r = rng.random()
                if i == 0 and r < 0.6:
                    action = "visit"
                else:
                    action = ("pv" if r < 0.55 else "search" if r < 0.75 else "visit" if r < 0.85 else
                              "cart" if r < cart else "pay" if r < pay else "pv")
                category = "payment" if action == "pay" and rng.random() < 0.9 else "click"
                rows.append(BehaviourRow(user, t, action, category, area))
                if rng.random() > 0.03:
                    t += int(rng.expovariate(1 / 40_000))
    return rows


def batched(rows: list[BehaviourRow]) -> list[BehaviourBatch]:
    return [BehaviourBatch("bench", i // BATCH, rows[i:i + BATCH]) for i in range(0, len(rows), BATCH)]


def beam_run(batches: list[BehaviourBatch], work: beam.PTransform) -> tuple[list[str], float, float]:
    """Create(batches) | work | a text file, on the local runner: (the file's lines, seconds to build, to run)."""
    with tempfile.TemporaryDirectory(prefix="bench-funnel-") as tmp:
        started = time.perf_counter()
        p = beam.Pipeline(options=PipelineOptions([], runner=RUNNER))  # []: not sys.argv
        _ = (p
             | beam.Create(batches, reshuffle=False)  # one local worker: the redistributing reshuffle is no use
             | work
             | beam.io.WriteToText(str(Path(tmp) / "out"), num_shards=1, shard_name_template=""))
        built = time.perf_counter()
        p.run().wait_until_finish()
        ran = time.perf_counter()
        return (Path(tmp) / "out").read_text().splitlines(), built - started, ran - built


def beam_counts(spec: FunnelSpec, batches: list[BehaviourBatch]) -> tuple[Counts, float, float]:
    """FunnelCounts; returns (counts, seconds to build, seconds to run)."""
    lines, build_s, run_s = beam_run(batches, FunnelCounts(spec) | beam.Map(json.dumps))
    counts: Counts = {}
    for line in lines:
        r = json.loads(line)
        for step in r["steps"]:
            key = (r["funnel"], r["period"], r["start"], tuple(r["dimensions"].values()), step["step"])
            counts[key] = step["users"]
    return counts, build_s, run_s


def beam_input_only(batches: list[BehaviourBatch]) -> tuple[int, float, float]:
    """The same input and sink around a trivial count of rows: what the input alone costs."""
    lines, build_s, run_s = beam_run(
        batches, beam.Map(lambda batch: len(batch.rows)) | beam.CombineGlobally(sum) | beam.Map(str))
    return int(lines[0]), build_s, run_s


def as_counts(spec: FunnelSpec, totals: dict) -> Counts:
    return {(spec.name, spec.period, start, dims, step.name): users
            for (start, dims), vector in totals.items() for step, users in zip(spec.steps, vector, strict=True)}


def plain_counts(spec: FunnelSpec, batches: list[BehaviourBatch]) -> Counts:
    """The pipeline's work in one loop: step rows by user, `user_depths` per user, increments summed per slot."""
    by_user: dict[str, list[BehaviourRow]] = {}
    for batch in batches:
        for row in batch.rows:
            if spec.step_hits(row):
                by_user.setdefault(row.user, []).append(row)
    n, totals = len(spec.steps), {}
    for user_rows in by_user.values():
        for slot, depth in user_depths(spec, user_rows).items():
            total = totals.setdefault(slot, [0] * n)
            for k, x in enumerate(increments(0, depth, n)):
                total[k] += x
    return as_counts(spec, totals)


def brute_counts(spec: FunnelSpec, batches: list[BehaviourBatch]) -> Counts:
    """The definition: every row of each user, `reference_depths` per user, users counted at each step up to
    their depth."""
    by_user: dict[str, list[BehaviourRow]] = {}
    for batch in batches:
        for row in batch.rows:
            by_user.setdefault(row.user, []).append(row)
    n, totals = len(spec.steps), {}
    for user_rows in by_user.values():
        for slot, depth in reference_depths(spec, user_rows).items():
            total = totals.setdefault(slot, [0] * n)
            for k in range(depth):
                total[k] += 1
    return as_counts(spec, totals)


def timed(fn: Callable, *args) -> tuple[float, object]:
    started = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - started, out


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.funnel")
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--brute-users", type=int, default=0,
                        help="run the brute force on the first N users only (0: all)")
    args = parser.parse_args(argv)
    logging.getLogger("apache_beam").setLevel(logging.WARNING)

    started = time.perf_counter()
    rows = generate(args.users, args.days, args.seed)
    print(f"generated {len(rows):,} rows in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    batches = batched(rows)
    per_user = sorted(Counter(row.user for row in rows).values())
    n_users = len(per_user)
    actions = Counter(row.action for row in rows)
    spec, strict = funnel("any"), funnel("strict")
    step_rows = sum(1 for row in rows if spec.step_hits(row))
    subset = None
    if 0 < args.brute_users < n_users:
        subset = {f"u{u:06d}" for u in range(args.brute_users)}
    sub_rows = [row for row in rows if row.user in subset] if subset else rows
    sub_batches = batched(sub_rows) if subset else batches
    sub_users = len(subset) if subset else n_users
    sub_note = f" (first {sub_users:,} users only)" if subset else ""

    before = peak_mb()
    print("beam: startup on a 100-row input ...", file=sys.stderr)
    tiny = [BehaviourBatch("bench", 0, rows[:100])]
    _, tiny_build, tiny_run = beam_counts(spec, tiny)
    print(f"beam: {len(batches):,} batches ...", file=sys.stderr)
    beam_out, build_s, run_s = beam_counts(spec, batches)
    beam_peak = peak_mb()
    print("beam: the same input, rows counted only ...", file=sys.stderr)
    counted, input_build, input_run = beam_input_only(batches)
    assert counted == len(rows)
    print("plain loop ...", file=sys.stderr)
    plain_s, plain_out = timed(plain_counts, spec, batches)
    assert beam_out == plain_out, "FunnelCounts and the plain loop disagree"
    print("brute force ...", file=sys.stderr)
    brute_s, brute_out = timed(brute_counts, spec, sub_batches)
    assert brute_out == (plain_counts(spec, sub_batches) if subset else plain_out), \
        "the brute-force definition disagrees"
    print("strict: plain loop and brute force ...", file=sys.stderr)
    strict_s, strict_out = timed(plain_counts, strict, batches)
    strict_brute_s, strict_brute_out = timed(brute_counts, strict, sub_batches)
    assert strict_brute_out == (plain_counts(strict, sub_batches) if subset else strict_out), \
        "strict: the brute-force definition disagrees"

    table = [  # (name, users, rows, seconds, note)
        (f"Beam FunnelCounts, {RUNNER}, build + run", n_users, len(rows), build_s + run_s,
         f"build {build_s:.1f} s (Create encodes the batches) + run {run_s:.1f} s; "
         f"peak RSS {beam_peak:,.0f} MB (+{beam_peak - before:,.0f} MB over the rows)"),
        (f"Beam startup alone (100 rows), {RUNNER}", len({r.user for r in rows[:100]}), 100,
         tiny_build + tiny_run, "fixed cost per run"),
        (f"Beam input alone (Create, count rows), {RUNNER}", n_users, len(rows), input_build + input_run,
         f"build {input_build:.1f} s + run {input_run:.1f} s: Create's cost, included in the first row"),
        ("plain Python loop (baseline)", n_users, len(rows), plain_s, "group step rows by user, user_depths, sum"),
        (f"brute force reference_depths{sub_note}", sub_users, len(sub_rows), brute_s,
         "the definition: group all rows by user, quadratic per user"),
        ("plain Python loop, order strict", n_users, len(rows), strict_s,
         f"brute force strict{sub_note}: {strict_brute_s:.1f} s, same counts"),
    ]

    plain_per_row = plain_s / len(rows)
    beam_per_row = (build_s + run_s - tiny_build - tiny_run) / len(rows)
    input_per_row = (input_build + input_run - tiny_build - tiny_run) / len(rows)
    funnels = {k[:4] for k in beam_out}
    print(f"\n{len(rows):,} events (behaviour rows: {step_rows:,} funnel steps: {actions['visit']:,} visit, "
          f"{actions['cart']:,} cart, {actions['pay']:,} pay; {actions['pv']:,} pv, {actions['search']:,} search), "
          f"{n_users:,} users over {args.days} days; rows per user median {statistics.median(per_user):.0f}, "
          f"p90 {per_user[int(0.9 * (n_users - 1))]}, p99 {per_user[int(0.99 * (n_users - 1))]}, "
          f"max {per_user[-1]:,}; {len(batches):,} batches of {BATCH}")
    print(f"funnel visit -> cart -> pay within 1 day, per day x area: {len(funnels)} result rows, "
          f"{sum(v for k, v in beam_out.items() if k[4] == 'visit'):,} users at visit (summed over days x areas), "
          f"{sum(v for k, v in beam_out.items() if k[4] == 'pay'):,} at pay; all three agree\n")
    print("| run | users | events | wall s | users/s | events/s | vs plain loop | notes |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, users, n_rows, seconds, note in table:
        ratio = f"{(n_rows / seconds) / (len(rows) / plain_s):.2f}x" if n_rows > 100 else "-"
        print(f"| {name} | {users:,} | {n_rows:,} | {seconds:.2f} | {users / seconds:,.0f} | {n_rows / seconds:,.0f} "
              f"| {ratio} | {note} |")
    print(f"\nper row: plain loop {plain_per_row * 1e6:.2f} us, Beam {beam_per_row * 1e6:.2f} us beyond its "
          f"{tiny_build + tiny_run:.1f} s startup ({beam_per_row / plain_per_row:.1f}x the loop), of which "
          f"{input_per_row * 1e6:.2f} us is Create's input alone: FunnelCounts itself "
          f"{(beam_per_row - input_per_row) * 1e6:.2f} us ({(beam_per_row - input_per_row) / plain_per_row:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
