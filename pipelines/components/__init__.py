"""The registry of components (docs/architecture.md, "The component contract"): the job config, route
validation, the graph and the summary loop over `COMPONENTS`. Adding a branch is one module and one line here."""

from pipelines.components.alarms import AlarmsComponent
from pipelines.components.base import Component, Wiring
from pipelines.components.behaviour import BehaviourComponent
from pipelines.components.cardinality import CardinalityComponent
from pipelines.components.counters import Counters
from pipelines.components.issues import IssuesComponent
from pipelines.components.search import SearchIndex
from pipelines.components.statistics import StatisticsComponent

COMPONENTS: list[Component] = [
    SearchIndex(),
    Counters(),
    CardinalityComponent(),
    StatisticsComponent(),
    AlarmsComponent(),
    BehaviourComponent(),
    IssuesComponent(),
]

__all__ = ["COMPONENTS", "Component", "Wiring"]
