"""Decoration ops, one per module with its config (docs/architecture.md, "The component contract").

`OPS` maps a job config's op key (`decorate[].ops[]: {range: {...}}`) to its config section; adding an op
is one module and one line here. The rule engine and the DoFn are in transforms/decorate.py.
"""

from transforms.decoration.base import Op, OpError, OpSection, decorations
from transforms.decoration.delete import DelConfig, DelOp
from transforms.decoration.geoip import GeoIpConfig, GeoIpOp
from transforms.decoration.money import MoneyConfig, MoneyOp
from transforms.decoration.normalize import BUILTIN_PATTERNS, NormalizeConfig, NormalizeOp
from transforms.decoration.range import RangeConfig, RangeOp

OPS: dict[str, type[OpSection]] = {
    "geoip": GeoIpConfig,
    "range": RangeConfig,
    "money": MoneyConfig,
    "normalize": NormalizeConfig,
    "del": DelConfig,
}

__all__ = [
    "BUILTIN_PATTERNS", "OPS", "DelOp", "GeoIpOp", "MoneyOp", "NormalizeOp", "Op", "OpError", "OpSection", "RangeOp",
    "decorations",
]
