"""Names of the side outputs every stage shares (docs/architecture.md, "The ground floor")."""

COUNTS = "counts"
"""Count dicts for the summary (`{"decorate": {...}}`, `{"routes": {...}}`, `{"index": {...}}`)."""
DEADLETTER = "deadletter"
"""DeadLetters: lines, or events a sink could not take."""


def route_tag(name: str) -> str:
    """The output of the routing stage that carries route `name`'s batches."""
    return f"route:{name}"
