"""Per-tensor reductions: each `norm(e)` or `rms(e)` becomes a per-tensor symbol computed by a stage."""

from __future__ import annotations

import sympy as sp

from optforge.compiler.ir import Assignment, Reduction
from optforge.compiler.spec import norm, rms

KINDS = {norm: "norm", rms: "rms"}


def extract_reductions(assignments: list[Assignment]) -> tuple[list[Assignment], list[Reduction]]:
    """Replace every distinct `norm(e)` by `norm0, norm1, ...` and `rms(e)` by `rms0, ...`;
    return the reductions found, in order of appearance."""
    found: dict[sp.Expr, sp.Symbol] = {}
    counts = dict.fromkeys(KINDS.values(), 0)
    for a in assignments:
        calls = [c for c in a.expr.atoms(sp.Function) if type(c) in KINDS]
        for call in sorted(calls, key=sp.default_sort_key):
            if call not in found:
                kind = KINDS[type(call)]
                found[call] = sp.Symbol(f"{kind}{counts[kind]}")
                counts[kind] += 1
    rewritten = [Assignment(a.target, a.expr.xreplace(found)) for a in assignments]
    return rewritten, [Reduction(symbol, call.args[0], type(call) is rms) for call, symbol in found.items()]
