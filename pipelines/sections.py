"""The pieces every config section is made of (docs/architecture.md, "The component contract"): frozen
sections that refuse unknown keys, dotted keys, names, event matchers, and each branch's lateness."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from transforms.lateness import DEFAULT_ALLOWED_LATENESS_S
from transforms.route import Condition, Matcher


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Names = Annotated[list[str], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)]


Name = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")]
DEFAULT_LATENESS = float(DEFAULT_ALLOWED_LATENESS_S)


class ConditionConfig(Section):
    field: str = Field(min_length=1)
    op: Literal["==", "!=", "<", "<=", ">", ">=", "in", "not_in", "exists", "missing", "regex"] = "=="
    value: Any = None

    @model_validator(mode="after")
    def _value_fits(self) -> ConditionConfig:
        if self.op in ("in", "not_in") and not isinstance(self.value, list):
            raise ValueError(f"op {self.op} needs a list value")
        if self.op == "regex":
            try:
                re.compile(str(self.value))
            except re.error as err:
                raise ValueError(f"value is not a valid regex: {err}") from None
        return self


def where_list(value: Any) -> Any:
    """`where: {type: OK}` is short for `where: [{field: type, op: "==", value: OK}]`."""
    if isinstance(value, dict):
        return [{"field": k, "op": "==", "value": v} for k, v in value.items()]
    return value


class MatchConfig(Section):
    """Which events: categories and areas (names or globs like `mongo*`), and conditions that all hold."""

    category: Names = []
    area: Names = []
    where: Annotated[list[ConditionConfig], BeforeValidator(where_list)] = []

    def matcher(self) -> Matcher:
        return Matcher(
            tuple(self.category), tuple(self.area), tuple(Condition(c.field, c.op, c.value) for c in self.where)
        )
