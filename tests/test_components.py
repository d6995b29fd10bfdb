"""The component registry: the job config, route validation and the summary are built from `COMPONENTS`."""

from __future__ import annotations

import pytest

from pipelines.components import COMPONENTS
from pipelines.config import ConfigError, JobConfig, parse_config
from transforms.decoration import OPS


def test_every_component_section_is_a_job_section_and_folders_are_unique() -> None:
    sections = [key for c in COMPONENTS for key in c.sections]
    assert set(sections) <= set(JobConfig.model_fields) and len(set(sections)) == len(sections)
    folders = [f for c in COMPONENTS for f in c.folders]
    assert len(set(folders)) == len(folders)


@pytest.mark.parametrize("section", [
    {"counters": [{"name": "c", "route": "nope"}]},
    {"cardinality": [{"name": "u", "route": "nope", "field": "uid"}]},
    {"statistics": [{"name": "s", "route": "nope", "field": "ms"}]},
    {"behaviour": [{"route": "nope", "user_field": "uid", "action": "visit"}]},
    {"alarms": {"rules": [{"name": "a", "route": "nope", "condition": {"threshold": 1}}]}},
    {"elasticsearch": {"routes": ["nope"]}},
])
def test_every_component_route_is_checked_by_the_one_loop(section: dict) -> None:
    with pytest.raises(ConfigError, match="no route named 'nope'; routes: pv"):
        parse_config({"routes": [{"name": "pv", "match": {"category": "pv"}}], **section})


def test_the_op_config_is_one_of_the_registered_ops() -> None:
    with pytest.raises(ConfigError, match="an op is one of " + ", ".join(OPS)):
        parse_config({"decorate": [{"ops": [{"range": {"keys": ["a"], "bounds": [1, 2]}, "del": {"keys": ["b"]}}]}]})
    rule = parse_config({"decorate": [{"ops": [{"del": {"keys": ["b"]}}]}]}).decorate_rules()[0]
    assert [op.name for op in rule.ops] == ["del"]
