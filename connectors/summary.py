"""summary.json of a bounded run: what was read and where every line ended up.

Counts come from the source (lines read) and from the published files of each sink (rows written), not from
the steps in between, so `lines_read == events + dead_letters` is a real check that nothing was lost.
`file_errors` ({path: {reason: lines read before it}}) names the files that could not be read to their end
(truncated or corrupt compressed data, a folder, no permission): `complete` is false then.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import apache_beam as beam
import orjson
from apache_beam.io.filesystems import FileSystems

from connectors.files import WrittenFile

SUMMARY_FILE = "summary.json"


def merge_counts(parts: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sum nested dicts of counts: {"a": 1, "b": {"x": 2}} + {"a": 3, "b": {"y": 1}}."""
    total: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, dict):
                total[key] = merge_counts([total.get(key, {}), value])
            else:
                total[key] = total.get(key, 0) + value
    return total


def file_counts(written: WrittenFile) -> dict[str, Any]:
    """A published file as summary counts (its writer counted what it holds in summary terms)."""
    return {**written.counts, "files": {written.sink: 1}}


def top_counts(counts: dict[str, int], n: int = 6) -> str:
    """The largest counts as `name 1,234, ...` (and how many more), for the report lines."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ", ".join(f"{k} {v:,}" for k, v in items[:n])
    return shown + (f", +{len(items) - n} more" if len(items) > n else "")


def _sorted(counts: dict[str, Any]) -> dict[str, Any]:
    return dict(sorted(counts.items()))


@dataclass
class ReadSection:
    """The source: what was read, and the files that could not be read to their end."""

    lines_read: int = 0
    bytes_read: int = 0
    files_read: int = 0
    file_errors: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class ArchiveSection:
    """The archive (`events/`): events per category, and how many carry each decoration."""

    events: int = 0
    categories: dict[str, int] = field(default_factory=dict)
    decorations: dict[str, int] = field(default_factory=dict)


@dataclass
class DeadLetterSection:
    """`deadletter/`: lines refused (by reason) and events a sink could not take (by sink)."""

    dead_letters: int = 0
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    sink_failures: dict[str, int] = field(default_factory=dict)


@dataclass
class RouteSection:
    """Decoration and routing: what the ops counted, events per route, and events no route took."""

    decorate: dict[str, int] = field(default_factory=dict)
    routes: dict[str, int] = field(default_factory=dict)
    unmatched: int = 0


_SECTIONS = {"read": ReadSection, "archive": ArchiveSection, "dead": DeadLetterSection, "route": RouteSection}


@dataclass
class Summary:
    """summary.json as a typed structure: a section per stage of the spine, the published files per sink,
    and one section per component (its output folder name -> what its writer counted: rows, or a dict such as
    the index's). `to_dict` is the file's flat JSON object."""

    read: ReadSection = field(default_factory=ReadSection)
    archive: ArchiveSection = field(default_factory=ArchiveSection)
    dead: DeadLetterSection = field(default_factory=DeadLetterSection)
    route: RouteSection = field(default_factory=RouteSection)
    files: dict[str, int] = field(default_factory=dict)
    components: dict[str, Any] = field(default_factory=dict)

    @property
    def balanced(self) -> bool:
        """Every line is an event or a dead letter."""
        return self.read.lines_read == self.archive.events + self.dead.dead_letters

    @property
    def complete(self) -> bool:
        """Every input file was read to its end."""
        return not self.read.file_errors

    @classmethod
    def from_counts(cls, counts: dict[str, Any]) -> Summary:
        """Merged count dicts (or a summary's JSON object) -> the structure; keys no stage owns are
        components' sections."""
        rest = {k: v for k, v in counts.items() if k not in ("balanced", "complete")}
        sections = {}
        for name, kind in _SECTIONS.items():
            values = {f.name: rest.pop(f.name) for f in fields(kind) if f.name in rest}
            sections[name] = kind(**{k: _sorted(v) if isinstance(v, dict) else v for k, v in values.items()})
        files = _sorted(rest.pop("files", {}))
        return cls(**sections, files=files, components=rest)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in _SECTIONS:
            out.update(asdict(getattr(self, name)))
        out.update(files=self.files, **self.components, balanced=self.balanced, complete=self.complete)
        return out


def finish_summary(counts: dict[str, Any]) -> dict[str, Any]:
    """Merged counts -> summary.json's object: the always-present keys and the balance check."""
    return Summary.from_counts(counts).to_dict()


def _write(counts: dict[str, Any], path: str) -> dict[str, Any]:
    summary = finish_summary(counts)
    with FileSystems.create(path) as out:
        out.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n")
    return summary


class WriteSummary(beam.PTransform):
    """Count dicts and published files -> the summary file at `path`; emits the summary dict."""

    def __init__(self, path: str, counts: tuple[beam.PCollection, ...], written: tuple[beam.PCollection, ...]):
        super().__init__()
        self._path = path
        self._counts, self._written = counts, written

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        as_counts = list(self._counts) + [
            w | f"Counts{i}" >> beam.Map(file_counts) for i, w in enumerate(self._written)
        ]
        return (
            as_counts
            | "AllCounts" >> beam.Flatten()
            | "Merge" >> beam.CombineGlobally(merge_counts)
            | "Write" >> beam.Map(_write, self._path)
        )
