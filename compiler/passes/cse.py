"""Common subexpressions (SymPy's `cse`), then an order that respects dependencies."""

from __future__ import annotations

from collections.abc import Iterable

import sympy as sp

from optforge.compiler.ir import Assignment


def eliminate_common_subexpressions(
    assignments: list[Assignment], prefix: str, guarded: bool = False
) -> list[Assignment]:
    """`assignments` with repeated subexpressions computed once into `<prefix>0, ...`.

    The result is in dependency order, keeping the given order where it can. With
    `guarded` (the host code, whose Python arithmetic raises) a Piecewise is left whole:
    its branches are computed only when taken, so a branch that is not taken cannot fail
    the step (AdEMAMix's log(beta1) for a warm-up that is off, with beta1 = 0).
    """
    if not assignments:
        return []
    taken = {s.name for a in assignments for s in a.expr.free_symbols | {a.target}}
    names = (sp.Symbol(f"{prefix}{i}") for i in range(10**6) if f"{prefix}{i}" not in taken)
    exprs = [a.expr for a in assignments]
    opaque: dict[sp.Symbol, sp.Expr] = {}
    if guarded:
        exprs = [_opaque_piecewise(e, opaque) for e in exprs]
    replacements, reduced = sp.cse(exprs, symbols=names, order="none")
    replacements, reduced = _keep_divisions(replacements, reduced)
    if opaque:
        replacements = [(s, e.xreplace(opaque)) for s, e in replacements]
        reduced = [e.xreplace(opaque) for e in reduced]
    temporaries = [Assignment(s, e) for s, e in replacements]
    results = [Assignment(a.target, e) for a, e in zip(assignments, reduced)]
    return schedule(temporaries + results)


def _opaque_piecewise(expr: sp.Expr, opaque: dict) -> sp.Expr:
    """`expr` with each outermost Piecewise replaced by a symbol of its own (kept in `opaque`),
    which `sympy.cse` cannot look into."""
    found = {}
    for node in sp.preorder_traversal(expr):
        if isinstance(node, sp.Piecewise) and node not in found:
            found[node] = sp.Dummy("piecewise")
    if not found:
        return expr
    outermost = {p: d for p, d in found.items() if not any(p != q and q.has(p) for q in found)}
    opaque.update({d: p for p, d in outermost.items()})
    return expr.xreplace(outermost)


def _keep_divisions(replacements, reduced):
    """`sympy.cse`'s output with no reciprocal as a temporary.

    For `a/d + b/d` cse computes `x0 = 1/d` and `a*x0 + b*x0`: two products with a
    rounded reciprocal where the rules divide twice. A temporary `1/d` is put back as
    the division by `d` (by a temporary holding `d`, when `d` is not a symbol).
    """
    kept, inline = [], {}
    for symbol, expr in replacements:
        expr = expr.xreplace(inline)
        if expr.is_Pow and expr.exp.is_Number and expr.exp < 0:
            divisor = expr.base if expr.exp == -1 else expr.base**-expr.exp
            if divisor.is_Atom:
                inline[symbol] = 1 / divisor
                continue
            kept.append((symbol, divisor))
            inline[symbol] = 1 / symbol
            continue
        kept.append((symbol, expr))
    return kept, [e.xreplace(inline) for e in reduced]


def schedule(assignments: Iterable[Assignment]) -> list[Assignment]:
    """Order assignments so each comes after those it reads; stable otherwise."""
    pending = list(assignments)
    defined_later = {a.target for a in pending}
    done: set[sp.Symbol] = set()
    ordered = []
    while pending:
        for i, a in enumerate(pending):
            if not (a.expr.free_symbols & defined_later) - done:
                ordered.append(pending.pop(i))
                done.add(a.target)
                break
        else:
            raise ValueError(f"cyclic assignments: {[str(a) for a in pending]}")
    return ordered


def prune(assignments: list[Assignment], needed: Iterable[sp.Symbol]) -> list[Assignment]:
    """Drop assignments that nothing in `needed` depends on."""
    live = set(needed)
    kept = []
    for a in reversed(assignments):
        if a.target in live:
            kept.append(a)
            live |= a.expr.free_symbols
    return kept[::-1]
