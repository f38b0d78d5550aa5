"""Sequential rules to single assignments.

In a spec, `m <- m + ...` followed by a rule reading `m` means the new `m`.
Renaming each updated input (`m` -> `m_new`) makes every symbol name one
value, which hoisting and CSE need.
"""

from __future__ import annotations

import sympy as sp

from optforge.compiler.ir import Assignment
from optforge.compiler.spec import Rule


def to_ssa(rules: list[Rule], inputs: set[sp.Symbol]) -> tuple[list[Assignment], dict[sp.Symbol, sp.Symbol]]:
    """Return the assignments and, for each updated input, the symbol of its final value.

    `inputs` are the symbols that hold a value before the rules run (the
    parameter, gradient, state); a rule assigning one of them defines
    `<name>_new`. Other targets are locals and keep their names.
    """
    current: dict[sp.Symbol, sp.Symbol] = {}
    assignments = []
    for rule in rules:
        expr = sp.sympify(rule.expr).xreplace(current)
        target = sp.Symbol(f"{rule.target.name}_new") if rule.target in inputs else rule.target
        assignments.append(Assignment(target, expr))
        current[rule.target] = target
    outputs = {sym: new for sym, new in current.items() if sym in inputs}
    return assignments, outputs
