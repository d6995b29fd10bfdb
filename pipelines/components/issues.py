"""Issues component (the Sentry part): error events of a route grouped by a fingerprint of configured fields
(e.g. category, class and the normalised message), one row per issue under `issues/` and in the search
cluster, re-emitted under the same `_id` as the issue changes (runbooks/issues.md).

An issue keeps its first and last event time, its count, its distinct users (HLL, as cardinality), its
areas, a few sample lines (the earliest, so bounded and unbounded runs keep the same ones) and its
episodes: runs of events less than `quiet_period` apart. The start of the first episode is a new issue,
of each later one a regression; each is notified (`new_issue`) through the job's notifiers unless another
went out for the issue less than `cooldown` before it, in event time. Partials merge in any order (min, max,
sums, unions, interval merges), so a stream converges on the backfill's rows.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from typing import Annotated, Any, NamedTuple

import apache_beam as beam
from apache_beam.coders import coders
from apache_beam.transforms import userstate, window
from pydantic import Field

from connectors.notify import ConsoleSettings, Notifiers, Notify
from connectors.summary import top_counts
from pipelines.components.base import Component, Wiring, unique
from pipelines.sections import DEFAULT_LATENESS, Name, Section
from pipelines.validation import Duration
from transforms.decorate import IndexNamer
from transforms.event import EventBatch, decode_raw
from transforms.fields import DottedKey, Keys, reader, text_of
from transforms.keys import result_id
from transforms.lateness import ConvergingCombine, Late
from transforms.partials import PartialsDoFn
from transforms.sketches import Hll
from transforms.times import iso_ms

MAX_EPISODES = 1000  # kept per issue (the latest); older ones only count in `episodes`
TOP_ISSUES = 5


class IssuesConfig(Section):
    """Issues of one route: `fingerprint` fields group its events; `user_field` counts distinct users."""

    name: Name
    route: str
    fingerprint: Keys = ["category", "class", "message_fp"]
    user_field: DottedKey | None = "uid"
    samples: Annotated[int, Field(ge=0, le=20)] = 3
    quiet_period: Duration = 86400.0
    cooldown: Duration = 3600.0
    severity: Annotated[int, Field(ge=1, le=5)] = 3
    notify: bool = True
    index: bool = True
    lg_k: Annotated[int, Field(ge=8, le=21)] = 12
    allowed_lateness: Duration = DEFAULT_LATENESS  # unused: an issue never closes; kept for `stream:` defaults


class IssueAcc(NamedTuple):
    """An issue's partial: its field values, first and last event time, count, users (HLL bytes), areas,
    the earliest samples as (ts, line), and its episodes as sorted [start, end] intervals."""

    fields: tuple[str | None, ...]
    first: int
    last: int
    count: int
    users: bytes
    areas: frozenset[str]
    samples: tuple[tuple[int, str], ...]
    episodes: tuple[tuple[int, int], ...]
    dropped_episodes: int = 0


def merge_episodes(intervals: Iterable[tuple[int, int]], quiet_ms: int) -> list[tuple[int, int]]:
    """Sorted intervals, those less than `quiet_ms` apart joined: the same for any split of the events."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(intervals):
        if out and start - out[-1][1] < quiet_ms:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def add_time(episodes: list[tuple[int, int]], ts: int, quiet_ms: int) -> None:
    """One event into sorted episodes, in place (a bundle's events mostly extend the last one)."""
    if episodes and episodes[-1][0] <= ts <= episodes[-1][1]:
        return
    i = bisect.bisect_left(episodes, (ts, ts))
    episodes.insert(i, (ts, ts))
    lo, hi = max(i - 1, 0), min(i + 2, len(episodes))
    episodes[lo:hi] = merge_episodes(episodes[lo:hi], quiet_ms)


def openings(episodes: Sequence[tuple[int, int]], cooldown_ms: int, after: int | None = None) -> list[int]:
    """Episode starts to notify: each unless one was notified less than `cooldown_ms` before (`after`: the
    last already notified)."""
    out = []
    for start, _ in episodes:
        if after is not None and start <= after:
            continue
        if after is None or start - after >= cooldown_ms:
            out.append(start)
            after = start
    return out


class _Open(NamedTuple):
    """An issue while a bundle folds it (mutable parts), made an IssueAcc when emitted."""

    fields: tuple[str | None, ...]
    span: list[int]  # [first, last, count]
    users: Any
    areas: set[str]
    samples: list[tuple[int, str]]
    episodes: list[tuple[int, int]]


class IssueFolder:
    """Per bundle: one partial per issue (transforms/partials.py)."""

    def __init__(self, conf: IssuesConfig) -> None:
        self.branches: Sequence[str] = ()
        self._conf, self._hll = conf, Hll(conf.lg_k)
        self._keys = [reader(k) for k in conf.fingerprint]
        self._user = reader(conf.user_field) if conf.user_field else None
        self._quiet = int(conf.quiet_period * 1000)

    def fold(self, batch: EventBatch, parts: dict[str, _Open], late: dict[str, Late]) -> None:
        conf = self._conf
        for event in batch.events:
            values = tuple(text_of(get(event)) for get in self._keys)
            fp = result_id("issue", conf.name, values)
            issue = parts.get(fp)
            if issue is None:
                issue = parts[fp] = _Open(values, [event.ts, event.ts, 0], self._hll.new(), set(), [], [])
            span = issue.span
            span[0], span[1], span[2] = min(span[0], event.ts), max(span[1], event.ts), span[2] + 1
            if self._user is not None and (user := text_of(self._user(event))) is not None:
                issue.users.update(user)
            issue.areas.add(event.area)
            if conf.samples:
                issue.samples.append((event.ts, decode_raw(event.raw)))
                if len(issue.samples) > 4 * conf.samples:
                    issue.samples[:] = sorted(issue.samples)[: conf.samples]
            add_time(issue.episodes, event.ts, self._quiet)

    def emit(self, parts: dict[str, _Open]) -> Iterator[tuple[str, IssueAcc, float]]:
        for fp, o in parts.items():
            acc = IssueAcc(o.fields, o.span[0], o.span[1], o.span[2], self._hll.serialize(o.users),
                           frozenset(o.areas), tuple(sorted(o.samples)[: self._conf.samples]), tuple(o.episodes))
            yield fp, acc, o.span[0] / 1000


def merge(a: IssueAcc, b: IssueAcc, hll: Hll, samples: int, quiet_ms: int) -> IssueAcc:
    """Two partials of one issue as one (commutative and associative)."""
    episodes = merge_episodes([*a.episodes, *b.episodes], quiet_ms)
    dropped = a.dropped_episodes + b.dropped_episodes + max(len(episodes) - MAX_EPISODES, 0)
    return IssueAcc(a.fields, min(a.first, b.first), max(a.last, b.last), a.count + b.count,
                    hll.merge([a.users, b.users]), a.areas | b.areas, tuple(sorted({*a.samples, *b.samples})[:samples]),
                    tuple(episodes[-MAX_EPISODES:]), dropped)


class _MergeFn(beam.CombineFn):
    def __init__(self, conf: IssuesConfig) -> None:
        self._hll, self._samples, self._quiet = Hll(conf.lg_k), conf.samples, int(conf.quiet_period * 1000)

    def create_accumulator(self) -> IssueAcc | None:
        return None

    def add_input(self, acc: IssueAcc | None, part: IssueAcc) -> IssueAcc:
        return part if acc is None else merge(acc, part, self._hll, self._samples, self._quiet)

    def merge_accumulators(self, accs: Iterable[IssueAcc | None]) -> IssueAcc | None:
        out = None
        for acc in accs:
            if acc is not None:
                out = self.add_input(out, acc)
        return out

    def extract_output(self, acc: IssueAcc | None) -> IssueAcc | None:
        return acc

    def get_accumulator_coder(self) -> coders.Coder:
        return coders.PickleCoder()


def issue_row(conf: IssuesConfig, namer: IndexNamer, fp: str, acc: IssueAcc) -> dict[str, Any]:
    """The one row of an issue; `_id` (and `_index`, from the first event) stay as it changes."""
    sketch = Hll(conf.lg_k).deserialize(acc.users)
    regressions = len(acc.episodes) + acc.dropped_episodes - 1
    return {
        "_id": fp, "_index": namer(acc.first), "issue": conf.name, "route": conf.route,
        "fields": dict(zip(conf.fingerprint, acc.fields, strict=True)),
        "first_seen": iso_ms(acc.first), "last_seen": iso_ms(acc.last), "_t": acc.last, "count": acc.count,
        "users": round(sketch.get_estimate(), 3), "areas": sorted(acc.areas),
        "samples": [line for _, line in acc.samples], "regressions": regressions,
        "last_regression": iso_ms(acc.episodes[-1][0]) if regressions else None,
    }


def notification(conf: IssuesConfig, row: dict[str, Any], start: int) -> dict[str, Any]:
    """A `new_issue` in the shape the notifiers take (connectors/notify.py)."""
    kind = "new_issue" if iso_ms(start) == row["first_seen"] else "regression"
    return {
        "_id": result_id("new_issue", row["_id"], start), "rule": f"{kind}:{conf.name}", "kind": kind,
        "issue": row["_id"], "key": row["fields"], "window": {"start": iso_ms(start), "end": row["last_seen"]},
        "_t": start, "aggregate": "count", "value": row["count"], "op": ">=", "threshold": 1,
        "severity": conf.severity, "samples": row["samples"],
    }


_LAST = beam.DoFn.StateParam(userstate.ReadModifyWriteStateSpec("notified", coders.PickleCoder()))


class _NewIssuesDoFn(beam.DoFn):
    """Per issue (keyed state: the last episode start notified): each new opening at most once per cooldown,
    however often the row is re-emitted."""

    def __init__(self, conf: IssuesConfig) -> None:
        self._conf = conf

    def process(self, item: tuple[str, tuple[dict[str, Any], IssueAcc]], last=_LAST) -> Iterator[dict[str, Any]]:
        row, acc = item[1]
        notified = last.read()
        starts = openings(acc.episodes, int(self._conf.cooldown * 1000), notified)
        for start in starts:
            yield notification(self._conf, row, start)
        if starts:
            last.write(starts[-1])


class Issues(beam.PTransform):
    """EventBatch (a route's) -> one row per issue, re-emitted as it changes; `new_issue` notifications."""

    def __init__(self, conf: IssuesConfig, namer: IndexNamer, notifiers: Notifiers | None) -> None:
        super().__init__(f"Issues[{conf.name}]")
        self._conf, self._namer, self._notifiers = conf, namer, notifiers

    def expand(self, batches: beam.PCollection) -> beam.PCollection:
        conf, namer = self._conf, self._namer
        partials = batches | "PreAggregate" >> beam.ParDo(PartialsDoFn(lambda: IssueFolder(conf), 20_000))
        issues = partials | "Combine" >> (  # unbounded: one global window, a pane every second while lines arrive
            beam.CombinePerKey(_MergeFn(conf)) if batches.is_bounded
            else ConvergingCombine(_MergeFn(conf), window.GlobalWindows(), 0, 1))
        rows = issues | "Row" >> beam.MapTuple(  # str keys: a deterministic coder for the keyed state below
            lambda fp, acc: (fp, (issue_row(conf, namer, fp, acc), acc))).with_output_types(tuple[str, Any])
        if self._notifiers is not None:
            _ = (rows
                 | "Rewindow" >> beam.WindowInto(window.GlobalWindows())
                 | "NewIssues" >> beam.ParDo(_NewIssuesDoFn(conf))
                 | "Notify" >> Notify(self._notifiers))
        return rows | "Rows" >> beam.MapTuple(lambda fp, pair: pair[0])


class _TopIssues(beam.CombineFn):
    """The largest issues by count, for the backfill's report (summary.json `issues_top`)."""

    def create_accumulator(self) -> dict[str, int]:
        return {}

    def add_input(self, acc: dict[str, int], row: dict[str, Any]) -> dict[str, int]:
        title = f"{row['issue']}: " + " ".join(str(v) for v in row["fields"].values() if v is not None)
        acc[title] = max(acc.get(title, 0), row["count"])
        return dict(sorted(acc.items(), key=lambda kv: -kv[1])[:TOP_ISSUES])

    def merge_accumulators(self, accs: Iterable[dict[str, int]]) -> dict[str, int]:
        out: dict[str, int] = {}
        for acc in accs:
            for title, n in acc.items():
                out[title] = max(out.get(title, 0), n)
        return dict(sorted(out.items(), key=lambda kv: -kv[1])[:TOP_ISSUES])

    def extract_output(self, acc: dict[str, int]) -> dict[str, Any]:
        return {"issues_top": acc}


class IssuesComponent(Component):
    sections = {"issues": (list[IssuesConfig], [])}
    folders = ("issues",)
    lateness = ("issues",)

    def validate(self, job: Any) -> None:
        unique((c.name for c in job.issues), "issue")

    def wire(self, job: Any, wiring: Wiring) -> None:
        notifiers = job.alarms.notifiers() if job.alarms else Notifiers(console=ConsoleSettings())
        for conf in job.issues:
            rows = wiring.route(conf.route) | Issues(conf, wiring.namer, notifiers if conf.notify else None)
            wiring.write(rows, "issues", conf.name)
            if rows.is_bounded:
                wiring.side.counts(rows | f"TopIssues[{conf.name}]" >> beam.CombineGlobally(_TopIssues()))
            if wiring.search is not None and conf.index:
                wiring.to_index.append(rows)

    def summary_lines(self, summary: dict[str, Any]) -> list[str]:
        top = summary.get("issues_top")
        return [f"  top issues    {top_counts(top, TOP_ISSUES)}"] if top else []
