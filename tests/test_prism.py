"""Streaming on Prism: windowed results of an unbounded Python source arrive while the source still runs.

The Python local runners cannot do this (the FnApiRunner holds a running source's watermark, so windows fire
only when it ends; the BundleBasedDirectRunner cannot run the splittable DoFn behind `UnboundedSource`).
Every probe appends a JSON line with the wall-clock time to a file: the LOOPBACK workers run in this process.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam import coders
from apache_beam.io.unbounded_source import (
    CheckpointMark,
    ReadFromUnboundedSource,
    UnboundedReader,
    UnboundedSource,
)
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState
from apache_beam.transforms import trigger, window
from apache_beam.transforms.userstate import BagStateSpec, TimeDomain, TimerSpec, on_timer
from apache_beam.utils.timestamp import MAX_TIMESTAMP, MIN_TIMESTAMP, Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming

from tests.servers.prism import PrismServer

pytestmark = pytest.mark.integration

BASE = Timestamp(1_700_000_000)  # event time of element 0; element i is at BASE + i * STEP
STEP = 0.1  # seconds of event time and (paced) wall time between elements
WINDOW = 2  # seconds


def note(path: str, **record: Any) -> None:
    """Append one JSON line with the wall-clock time: the probes' only channel out of the pipeline."""
    record["wall"] = time.time()
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_notes(folder: Path, name: str) -> list[dict[str, Any]]:
    path = folder / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


class PacedMark(CheckpointMark):
    """Where to resume (the next index) and when the stream started (so pacing survives a new reader)."""

    def __init__(self, next_index: int, started: float, notes: str) -> None:
        self.next_index, self.started, self.notes = next_index, started, notes

    def finalize_checkpoint(self) -> None:
        note(f"{self.notes}/finalize.jsonl", next_index=self.next_index)


class PacedReader(UnboundedReader):
    """Releases element i at wall time started + i * STEP; never blocks (False = no data yet)."""

    def __init__(self, source: PacedSource, mark: PacedMark | None) -> None:
        self.source = source
        self.next = mark.next_index if mark else 0
        self.started = mark.started if mark else time.time()
        self.current: int | None = None

    def _claim(self) -> bool:
        if self.next >= self.source.count or time.time() < self.started + self.next * STEP:
            return False
        self.current, self.next = self.next, self.next + 1
        if self.next == self.source.count:
            note(f"{self.source.notes}/source.jsonl", last=self.current)
        return True

    def start(self) -> bool:
        return self._claim()

    def advance(self) -> bool:
        return self._claim()

    def get_current(self) -> tuple[str, int]:
        assert self.current is not None
        return f"k{self.current % 2}", self.current

    def get_current_timestamp(self) -> Timestamp:
        assert self.current is not None
        return BASE + self.current * STEP

    def get_watermark(self) -> Timestamp:
        if self.next >= self.source.count:
            return MAX_TIMESTAMP  # the end: lets the last windows close and the pipeline finish
        return MIN_TIMESTAMP if self.current is None else BASE + self.current * STEP

    def get_checkpoint_mark(self) -> PacedMark:
        return PacedMark(self.next, self.started, self.source.notes)


class PacedSource(UnboundedSource):
    """`count` keyed elements over count * STEP seconds of wall time, watermark = last event time."""

    def __init__(self, notes: Path, count: int) -> None:
        self.notes, self.count = str(notes), count

    def split(self, desired_num_splits: int, options: Any = None) -> list[PacedSource]:
        return [self]

    def create_reader(self, options: Any, checkpoint_mark: PacedMark | None) -> PacedReader:
        return PacedReader(self, checkpoint_mark)

    def get_checkpoint_mark_coder(self) -> coders.Coder:
        return coders.PickleCoder()


class NotePane(beam.DoFn):
    """Notes each (key, value) with its window and pane timing."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def process(self, kv: tuple[str, Any], w: Any = beam.DoFn.WindowParam,
                pane: Any = beam.DoFn.PaneInfoParam) -> None:
        value = len(kv[1]) if isinstance(kv[1], list) else kv[1]
        note(self.path, key=kv[0], value=value, start=float(w.start - BASE), timing=int(pane.timing))


BAG = BagStateSpec("bag", coders.VarIntCoder())
END = TimerSpec("end", TimeDomain.WATERMARK)
BAG_PARAM = beam.DoFn.StateParam(BAG)
END_PARAM = beam.DoFn.TimerParam(END)


class CountAtWindowEnd(beam.DoFn):
    """Stateful: buffers a key's values per window; an event-time timer at the window's end counts them."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def process(self, kv: tuple[str, int], w: Any = beam.DoFn.WindowParam,
                bag: Any = BAG_PARAM, end: Any = END_PARAM) -> None:
        bag.add(kv[1])
        end.set(w.max_timestamp())

    @on_timer(END)
    def fire(self, key: str = beam.DoFn.KeyParam, w: Any = beam.DoFn.WindowParam,
             bag: Any = BAG_PARAM) -> None:
        note(self.path, key=key, n=len(list(bag.read())), start=float(w.start - BASE))
        bag.clear()


def build(p: beam.Pipeline, notes: Path, count: int) -> None:
    # max_read_time_seconds: a busy reader reports its watermark only when its bundle ends (default 10 s)
    events = (p
              | ReadFromUnboundedSource(PacedSource(notes, count), poll_interval=0.2, max_read_time_seconds=1.0)
              | "Typed" >> beam.Map(lambda kv: kv).with_output_types(tuple[str, int]))
    fixed = events | "Fixed" >> beam.WindowInto(window.FixedWindows(WINDOW))
    _ = fixed | beam.CombinePerKey(sum) | "NoteFixed" >> beam.ParDo(NotePane(notes / "fixed.jsonl"))
    _ = fixed | "Timers" >> beam.ParDo(CountAtWindowEnd(notes / "timers.jsonl"))
    # Prism 2.77 panics ("assignment to entry in nil map", aggregateStageKind.buildProcessingTimeBundle) when an
    # early AfterProcessingTime timer fires after its window was closed and garbage-collected: often under CPU
    # load with AfterWatermark(early=AfterProcessingTime) alone. A late AfterCount trigger keeps that stale
    # timer from firing a pane, and allowed lateness keeps the window's state past its end.
    early = trigger.AfterWatermark(early=trigger.AfterProcessingTime(1), late=trigger.AfterCount(1))
    _ = (events
         | "Sliding" >> beam.WindowInto(window.SlidingWindows(2 * WINDOW, WINDOW), trigger=early,
                                        accumulation_mode=trigger.AccumulationMode.ACCUMULATING, allowed_lateness=10)
         | beam.GroupByKey()
         | "NoteSliding" >> beam.ParDo(NotePane(notes / "sliding.jsonl")))


def test_windows_fire_while_the_unbounded_source_runs(prism: PrismServer, tmp_path: Path) -> None:
    count = 100  # 10 s of wall time
    p = beam.Pipeline(options=PipelineOptions([*prism.options(), "--streaming"]))
    build(p, tmp_path, count)
    result = p.run()
    try:
        assert result.wait_until_finish(duration=45_000) == PipelineState.DONE
    finally:
        if not PipelineState.is_terminal(result.state):
            result.cancel()

    source_end = read_notes(tmp_path, "source.jsonl")[0]["wall"]
    fixed = read_notes(tmp_path, "fixed.jsonl")
    sums: dict[tuple[str, float], int] = defaultdict(int)
    for i in range(count):
        sums[f"k{i % 2}", (i * STEP) // WINDOW * WINDOW] += i
    assert {(r["key"], r["start"]): r["value"] for r in fixed} == sums
    assert all(r["timing"] == PaneInfoTiming.ON_TIME for r in fixed)
    # the first window closes 2 s into a 10 s stream: with the watermark held it would come after source_end
    assert min(r["wall"] for r in fixed) < source_end - 3

    timers = read_notes(tmp_path, "timers.jsonl")
    assert sum(r["n"] for r in timers) == count and len(timers) == len(sums)
    assert min(r["wall"] for r in timers) < source_end - 3

    sliding = read_notes(tmp_path, "sliding.jsonl")
    early = [r for r in sliding if r["timing"] == PaneInfoTiming.EARLY]
    assert early and min(r["wall"] for r in early) < source_end - 3
    on_time = {(r["key"], r["start"]): r["value"] for r in sliding
               if r["timing"] == PaneInfoTiming.ON_TIME}
    assert on_time[("k0", 0.0)] == 20  # window [0 s, 4 s): 40 elements, half of them k0 (accumulating)

    finalized = read_notes(tmp_path, "finalize.jsonl")
    assert finalized and min(r["wall"] for r in finalized) < source_end


def test_cancel_stops_a_running_stream(prism: PrismServer, tmp_path: Path) -> None:
    p = beam.Pipeline(options=PipelineOptions([*prism.options(), "--streaming"]))
    build(p, tmp_path, count=10**6)  # would run for 28 hours
    result = p.run()
    try:
        deadline = time.monotonic() + 30
        while not read_notes(tmp_path, "fixed.jsonl") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert read_notes(tmp_path, "fixed.jsonl"), "no window result within 30 s"
        assert result.state == PipelineState.RUNNING
    finally:
        result.cancel()
    cancelled = time.time()
    assert result.state == PipelineState.CANCELLED
    time.sleep(2)
    for name in ("fixed.jsonl", "finalize.jsonl", "sliding.jsonl"):
        assert not [r for r in read_notes(tmp_path, name) if r["wall"] > cancelled + 1], name


class _WorkDoFn(beam.DoFn):
    """One bundle with no outputs that does `cpu_s` seconds of CPU work of its own (its thread's CPU time, not
    a wall-clock wait) and writes how much it did to `work`; `started` says the work has begun."""

    def __init__(self, folder: str, cpu_s: float) -> None:
        self._folder, self._cpu_s = folder, cpu_s

    def process(self, element: int) -> Iterator[int]:
        Path(self._folder, "started").touch()
        t0, n = time.thread_time(), 0
        while time.thread_time() - t0 < self._cpu_s:
            n = hash((n, element))
        Path(self._folder, "work").write_text(str(time.thread_time() - t0))
        return iter(())


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_prism_waits_for_a_bundle_without_spinning(prism: PrismServer, tmp_path: Path) -> None:
    """Beam 2.77's Prism spun a core per bundle in flight once the bundle's data was in (a closed channel in
    its progress loop's select); dpipe builds it with third_party/prism/select-spin.patch. A bundle with no
    outputs is in that state from its start: while one works, Prism must use a small part of the CPU the
    bundle does (spinning, it takes about as much)."""
    assert prism.pid is not None
    p = beam.Pipeline(options=PipelineOptions(prism.options()))
    _ = p | beam.Create([1]) | beam.ParDo(_WorkDoFn(str(tmp_path), 2.0))
    result = p.run()
    deadline = time.monotonic() + 60
    while not (tmp_path / "started").exists():
        assert time.monotonic() < deadline, "the bundle never started"
        time.sleep(0.05)
    cpu0 = cpu_seconds(prism.pid)
    result.wait_until_finish()
    prism_cpu, work = cpu_seconds(prism.pid) - cpu0, float((tmp_path / "work").read_text())
    assert prism_cpu < 0.25 * work, f"Prism used {prism_cpu:.2f} CPU s while the bundle did {work:.2f}"
