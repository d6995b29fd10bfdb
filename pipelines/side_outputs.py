"""What every branch hands back besides its results, gathered in one place (docs/architecture.md,
"The component contract"), in the spirit of Beam's `ErrorHandler`.

A branch adds its dead letters (lines or events it could not take), its count dicts for the summary and its
published files (`WrittenFile`s) while the graph is built; `close` writes every dead letter once, to
`deadletter/`, and freezes the collection: a branch wired after it would lose what it adds, so adding then
is an error, not a silent loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import apache_beam as beam

from connectors.files import WriteDeadLetters


@dataclass(frozen=True)
class GraphOutputs:
    """What the graph produced: published files of each sink (WrittenFile) and count dicts for the summary."""

    events: beam.PCollection
    dead_letters: beam.PCollection
    counts: tuple[beam.PCollection, ...]
    others: tuple[beam.PCollection, ...] = ()  # published files of the other sinks (counters/...)

    def written(self) -> tuple[beam.PCollection, ...]:
        return (self.events, self.dead_letters, *self.others)


class SideOutputs:
    """Dead letters, counts and published files of every branch, until `close`."""

    def __init__(self) -> None:
        self._dead: list[beam.PCollection] = []
        self._counts: list[beam.PCollection] = []
        self._published: list[beam.PCollection] = []
        self._closed = False

    def _open(self) -> None:
        if self._closed:
            raise RuntimeError("side outputs are closed: wire every branch before the graph's end")

    def dead_letters(self, letters: beam.PCollection) -> None:
        """DeadLetters: written to `deadletter/` with everyone else's."""
        self._open()
        self._dead.append(letters)

    def counts(self, counts: beam.PCollection) -> None:
        """Count dicts, merged into the summary (connectors/summary.py)."""
        self._open()
        self._counts.append(counts)

    def published(self, files: beam.PCollection) -> None:
        """A sink's published WrittenFiles: the summary counts their rows."""
        self._open()
        self._published.append(files)

    def close(self, events: beam.PCollection, output: str, temp_dir: str) -> GraphOutputs:
        """Write the dead letters and hand the graph's outputs to the entry point (`events`: the archive's
        published files)."""
        self._open()
        self._closed = True
        dead = (
            self._dead
            | "AllDeadLetters" >> beam.Flatten()
            | "WriteDeadLetters" >> WriteDeadLetters(output, temp_dir)
        )
        return GraphOutputs(events, dead, tuple(self._counts), tuple(self._published))
