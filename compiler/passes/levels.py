"""Binding-time levels: when a value can be computed.

CONST    numbers and expressions of them
STEP     once per step, on the host, in float64 (t, lr, hyperparameters)
TENSOR   once per tensor (per-tensor inputs such as the weight decay flag)
ELEMENT  per element, inside the fused loop

The level of an expression is the highest level of its free symbols.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import IntEnum

import sympy as sp

from optforge.compiler.ir import Assignment


class Level(IntEnum):
    CONST = 0
    STEP = 1
    TENSOR = 2
    ELEMENT = 3


def level_of(expr: sp.Expr, levels: Mapping[sp.Symbol, Level]) -> Level:
    """The level of `expr`; every free symbol must have one in `levels`."""
    return max((levels[s] for s in expr.free_symbols), default=Level.CONST)


def assign_levels(
    assignments: Iterable[Assignment], levels: Mapping[sp.Symbol, Level]
) -> dict[sp.Symbol, Level]:
    """`levels` extended with the level of each assignment's target, in order."""
    result = dict(levels)
    for a in assignments:
        result[a.target] = level_of(a.expr, result)
    return result
