"""summary.json of a bounded run: what was read and where every line ended up.

Counts come from the source (lines read) and from the published files of each sink (rows written), not from
the steps in between, so `lines_read == events + dead_letters` is a real check that nothing was lost.
`file_errors` ({path: {reason: lines read before it}}) names the files that could not be read to their end
(truncated or corrupt compressed data, a folder, no permission): `complete` is false then.
"""

from __future__ import annotations

from collections.abc import Iterable
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


def finish_summary(counts: dict[str, Any]) -> dict[str, Any]:
    """Fill the always-present keys and the balance check."""
    summary = {"lines_read": 0, "bytes_read": 0, "files_read": 0, "events": 0, "dead_letters": 0, "unmatched": 0}
    summary.update(counts)
    for key in ("categories", "dead_letter_reasons", "sink_failures", "files", "routes", "decorate", "decorations",
                "file_errors"):
        summary[key] = dict(sorted(summary.get(key, {}).items()))
    summary["balanced"] = summary["lines_read"] == summary["events"] + summary["dead_letters"]
    summary["complete"] = not summary["file_errors"]  # every input file read to its end
    return summary


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
