"""Host-side branches: a Piecewise whose condition is known per step is not a per-element branch.

RAdam rectifies only when `rho_t > 5`, ProximalAdagrad shrinks only when
`l1 > 0`: both conditions depend on the step and the hyperparameters alone.
This pass finds such conditions ("guards") in per-element code; the compiler
then emits one kernel per combination of their values and the host picks one
each step, so the loop body holds no branch.
"""

from __future__ import annotations

import itertools

import sympy as sp

from optforge.compiler.ir import Assignment
from optforge.compiler.passes.levels import Level, level_of


def find_guards(assignments: list[Assignment], levels: dict[sp.Symbol, Level]) -> list[sp.Expr]:
    """Step-level conditions of the Piecewise expressions in per-element assignments, in order."""
    guards: list[sp.Expr] = []
    for a in assignments:
        if levels[a.target] < Level.ELEMENT:
            continue  # host and per-tensor code keep their Piecewise as a conditional expression
        for piecewise in sorted(a.expr.atoms(sp.Piecewise), key=sp.default_sort_key):
            for _, condition in piecewise.args:
                if condition is sp.true or condition in guards:
                    continue
                if level_of(condition, levels) <= Level.STEP:
                    guards.append(condition)
    return guards


def branches(guards: list[sp.Expr]) -> list[tuple[bool, ...]]:
    """Every combination of guard values (all True first)."""
    return list(itertools.product((True, False), repeat=len(guards)))


def choose_branch(exprs: list[sp.Expr], guards: list[sp.Expr], values: tuple[bool, ...]) -> list[sp.Expr]:
    """`exprs` with each guard fixed to its value; SymPy collapses the Piecewise."""
    fixed = {g: sp.true if v else sp.false for g, v in zip(guards, values)}
    return [e.xreplace(fixed) for e in exprs]
