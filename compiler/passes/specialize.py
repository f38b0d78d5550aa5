"""Select one kernel variant: fix every flag, keep only the rules that apply."""

from __future__ import annotations

import sympy as sp

from optforge.compiler.spec import Rule, Spec, active


def specialize(spec: Spec, variant: dict[sp.Symbol, bool]) -> list[Rule]:
    """The rules of `spec` with each flag replaced by its value in `variant`.

    Flags appear in rules only as Piecewise conditions; substituting them
    lets SymPy collapse each Piecewise to one branch, so a flag never
    becomes a branch in the generated kernel.
    """
    values = {flag: sp.true if on else sp.false for flag, on in variant.items()}
    return [
        Rule(rule.target, sp.sympify(rule.expr).subs(values))
        for rule in spec.rules
        if active(rule.when, variant)
    ]
