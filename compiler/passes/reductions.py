"""Per-tensor reductions: each `norm(e)` becomes a per-tensor symbol computed by a stage."""

from __future__ import annotations

import sympy as sp

from optforge.compiler.ir import Assignment, Reduction
from optforge.compiler.spec import norm


def extract_reductions(assignments: list[Assignment]) -> tuple[list[Assignment], list[Reduction]]:
    """Replace every distinct `norm(e)` by `norm0, norm1, ...`; return the reductions found."""
    found: dict[sp.Expr, sp.Symbol] = {}
    for a in assignments:
        for call in sorted(a.expr.atoms(norm), key=sp.default_sort_key):
            if call not in found:
                found[call] = sp.Symbol(f"norm{len(found)}")
    rewritten = [Assignment(a.target, a.expr.xreplace(found)) for a in assignments]
    return rewritten, [Reduction(symbol, call.args[0]) for call, symbol in found.items()]
