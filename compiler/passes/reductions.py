"""Per-tensor reductions: each `norm(e)`, `rms(e)` or `mean(e)` becomes one per-tensor symbol."""

from __future__ import annotations

import sympy as sp

from optforge.compiler.ir import Assignment, Reduction
from optforge.compiler.spec import mean, norm, rms

KINDS = {norm: "norm", rms: "rms", mean: "mean"}


def extract_reductions(assignments: list[Assignment]) -> tuple[list[Assignment], list[Reduction]]:
    """Replace every distinct `norm(e)` by `norm0, norm1, ...`, `rms(e)` by `rms0, ...` and
    `mean(e)` by `mean0, ...`; return the reductions found, in order of appearance (a mean
    `plain`: it sums `e` itself and takes no root)."""
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
    return rewritten, [
        Reduction(symbol, call.args[0], type(call) in (rms, mean), plain=type(call) is mean)
        for call, symbol in found.items()
    ]


def _square_roots(expr: sp.Expr) -> int:
    return sum(1 for p in expr.atoms(sp.Pow) if p.exp in (sp.S.Half, -sp.S.Half))


def summands(
    assignments: list[Assignment], reductions: list[Reduction]
) -> tuple[list[Assignment], list[Reduction]]:
    """The per-element value each reduction sums, `<symbol>_of`, and the reductions marked
    `squared` where that value is already the square.

    A norm sums `f64(e) * f64(e)` (the square exact in float64) unless squaring `e`'s
    definition removes a square root: Adafactor's RMS of `U = g/sqrt(max(eps1**2, v_hat))`
    sums `g**2/max(eps1**2, v_hat)`, a division per element instead of a square root and
    two (the rounding of one float32 square is far below what a norm's users can see).
    A plain mean sums `e` as it is.
    """
    definitions = {a.target: a.expr for a in assignments}
    values, marked = [], []
    for r in reductions:
        value, squared = r.expr, False
        definition = definitions.get(r.expr) if isinstance(r.expr, sp.Symbol) else None
        fewer_roots = definition is not None and _square_roots(definition**2) < _square_roots(definition)
        if fewer_roots and not r.plain:
            value, squared = definition**2, True
        values.append(Assignment(sp.Symbol(f"{r.symbol}_of"), value))
        marked.append(Reduction(r.symbol, r.expr, r.mean, squared, plain=r.plain))
    return values, marked
