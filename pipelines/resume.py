"""Resumable backfills: the inputs are cut into waves, each wave one complete bounded run.

A wave publishes its outputs like any run (temp files renamed into place at its end), and only then writes
its record, `<output>/_done/<wave>.json`: the files it read and its summary counts. A re-run with
`--skip_done` lists the inputs again, skips every file a record covers and runs the rest; `summary.json`
is the sum of every record, so a stopped and resumed backfill ends with the summary of an uninterrupted one.
A wave stopped before its record is simply run again: output file names come from the input ranges, so
its files replace the ones it may already have published.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from apache_beam.io.filesystems import FileSystems

from connectors.archives import InputError
from connectors.files import join
from connectors.summary import finish_summary, merge_counts

DONE_DIR = "_done"
log = logging.getLogger("dpipe.backfill")


@dataclass(frozen=True, slots=True)
class InputFile:
    """A matched input file; a changed size or modification time makes it a new, undone file."""

    path: str
    size: int
    updated: float

    @property
    def key(self) -> str:
        return f"{self.path}\0{self.size}\0{int(self.updated)}"


def list_inputs(patterns: list[str]) -> list[InputFile]:
    """Every file the globs match, once, sorted by path; empty files and folders (HDFS lists them) have no lines."""
    files: dict[str, InputFile] = {}
    for pattern in patterns:
        try:
            result = FileSystems.match([pattern])[0]
        except Exception as err:  # Beam wraps every filesystem failure differently; report them all
            raise InputError(f"--input {pattern}: cannot list it: {err}") from None
        if not result.metadata_list:
            raise InputError(f"--input {pattern}: no file matches this pattern")
        for m in result.metadata_list:
            if m.size_in_bytes > 0:
                files[m.path] = InputFile(m.path, m.size_in_bytes, m.last_updated_in_seconds or 0.0)
    return [files[p] for p in sorted(files)]


def plan_waves(files: list[InputFile], wave_bytes: int) -> Iterator[list[InputFile]]:
    """Consecutive files (in path order, which is usually time order) of about `wave_bytes` each."""
    wave: list[InputFile] = []
    size = 0
    for f in files:
        if wave and size + f.size > wave_bytes:
            yield wave
            wave, size = [], 0
        wave.append(f)
        size += f.size
    if wave:
        yield wave


def wave_id(files: Iterable[InputFile]) -> str:
    digest = hashlib.blake2b("\n".join(f.key for f in files).encode("utf-8"), digest_size=10).hexdigest()
    return f"wave-{digest}"


@dataclass
class WaveRecord:
    """What `_done/<wave>.json` holds."""

    wave: str
    files: list[InputFile]
    summary: dict[str, Any]
    finished: str = ""

    @classmethod
    def from_json(cls, data: bytes) -> WaveRecord:
        raw = orjson.loads(data)
        return cls(raw["wave"], [InputFile(**f) for f in raw["files"]], raw["summary"], raw.get("finished", ""))


def read_records(output: str) -> list[WaveRecord]:
    """The records of the waves already done in `output` (none when it is new)."""
    pattern = join(output, DONE_DIR, "wave-*.json")
    try:
        found = FileSystems.match([pattern])[0].metadata_list
    except Exception:
        return []
    records = []
    for m in sorted(found, key=lambda m: m.path):
        with FileSystems.open(m.path) as f:
            records.append(WaveRecord.from_json(f.read()))
    return records


def write_record(output: str, record: WaveRecord) -> None:
    """Write the record under a temporary name, then rename it: a record is whole or absent."""
    record.finished = datetime.now(UTC).isoformat(timespec="seconds")
    final = join(output, DONE_DIR, f"{record.wave}.json")
    temp = join(output, DONE_DIR, f".{record.wave}.json.tmp")
    with FileSystems.create(temp) as f:
        f.write(orjson.dumps(asdict(record), option=orjson.OPT_INDENT_2))
    if FileSystems.exists(final):
        FileSystems.delete([final])
    FileSystems.rename([temp], [final])


def undone(files: list[InputFile], records: list[WaveRecord]) -> list[InputFile]:
    done = {f.key for r in records for f in r.files}
    return [f for f in files if f.key not in done]


def total_summary(records: list[WaveRecord]) -> dict[str, Any]:
    """The summary of the whole backfill: the sum of its waves' counts, checked again."""
    parts = [{k: v for k, v in r.summary.items() if k not in ("balanced", "complete")} for r in records]
    return finish_summary(merge_counts(parts))
