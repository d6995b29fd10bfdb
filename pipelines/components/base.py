"""The component contract (docs/architecture.md, "The component contract").

A component is one analysis branch: it owns its config section (a model and its default), names the routes
it reads, wires itself into the graph from the routed PCollections, writes its rows to its output folder,
and adds its dead letters, counts and published files to the SideOutputs. `pipelines/components/__init__.py`
lists them; the job config, route validation, the graph and the summary loop over that list.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import apache_beam as beam

from connectors.files import WriteJsonRows
from pipelines.side_outputs import SideOutputs
from transforms.decorate import IndexNamer
from transforms.tags import route_tag

if TYPE_CHECKING:
    from connectors.search import SearchSettings


@dataclass
class Wiring:
    """What a component's `wire` gets: the routed batches, the side outputs, where files go, and the
    documents bound for the search cluster (the index component writes them; others may add theirs)."""

    routed: beam.pvalue.DoOutputsTuple
    side: SideOutputs
    output: str
    temp_dir: str
    namer: IndexNamer
    compression: str
    search: SearchSettings | None = None
    to_index: list[beam.PCollection] = field(default_factory=list)

    def route(self, name: str) -> beam.PCollection:
        """A route's EventBatches."""
        return self.routed[route_tag(name)]

    def write(self, rows: beam.PCollection, folder: str, name: str) -> None:
        """Result dicts -> `<folder>/part-*.jsonl`, published for the summary."""
        self.side.published(rows | f"Write[{folder}/{name}]" >> WriteJsonRows(folder, self.output, self.temp_dir))


class Component:
    """One branch. Subclasses set `sections` (job config key -> (type, default when absent)), `folders`
    (output folders, also its summary keys), and implement `routes` and `wire`; both get the whole job, so
    a component may read several sections of its own (behaviour and funnels)."""

    sections: ClassVar[dict[str, tuple[Any, Any]]]
    folders: ClassVar[tuple[str, ...]] = ()
    lateness: ClassVar[tuple[str, ...]] = ()
    """Its list sections whose items take `stream.allowed_lateness` unless they set their own."""
    wire_last: ClassVar[bool] = False  # wired after the others: it takes what they add to `to_index`

    def routes(self, job: Any) -> Iterator[tuple[str, str]]:
        """(config key path, route name) of every route it reads: by default each item of its list sections
        with a `route` (`counters.<name>.route`, or `behaviour.<route>.route` for items without a name)."""
        for key in self.sections:
            items = getattr(job, key)
            for item in items if isinstance(items, list) else ():
                if hasattr(item, "route"):
                    yield f"{key}.{getattr(item, 'name', item.route)}.route", item.route

    def validate(self, job: Any) -> None:
        """Checks across the job (raise ValueError naming the key path)."""

    def default_lateness(self, data: dict[str, Any], lateness: Any) -> None:
        """Fill `stream.allowed_lateness` into the raw YAML of its items that set none."""
        for name in self.lateness:
            items = data.get(name)
            if isinstance(items, list):
                data[name] = [{"allowed_lateness": lateness, **i} if isinstance(i, dict) else i for i in items]

    def wire(self, job: Any, wiring: Wiring) -> None:
        raise NotImplementedError

    def summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Its part of summary.json: rows per output folder, for the backfill's analysis line."""
        return {k: summary[k] for k in self.folders if summary.get(k)}

    def summary_lines(self, summary: dict[str, Any]) -> list[str]:
        """Lines of its own in the backfill's report, beyond a count in the analysis line."""
        return []


def unique(names: Iterable[str], what: str) -> None:
    """Names of a section's items must be unique (their `_id`s and output rows are keyed by them)."""
    seen = list(names)
    if len(set(seen)) != len(seen):
        raise ValueError(f"{what} names must be unique")
