"""Index spaces and phases of every kernel's values; the means of a factored kernel.

A value lives in a space (ir.Space): once per step (SCALAR) or per tensor,
per matrix, per row, per column, or per element. An expression's space is the
join of its symbols' spaces, where a row value times a column value is per
element (an outer product). A value's phase (its pass) is when it can first
be computed:

    1 element pass 1     the inputs; sums the norms' and the row and column means' arguments
    2 line stage          row and column values (the means of pass 1, row/col state)
    3 element pass 2     what reads them; the matrix means are ready
    4 finalize            per-tensor values from the passes' reductions
    5 element pass 3     what reads those
    6 apply              a spec's separate parameter update, and what reads it

A flat kernel has pass 1 only; a two-stage one passes 1 and 3 (or 1 and 6).
"""

from __future__ import annotations

from collections.abc import Mapping

import sympy as sp

from optforge.compiler.ir import FINALIZE, LINES, PASS1, PASS2, PASS3, Assignment, Mean, Space
from optforge.compiler.spec import SpecError, col_mean, matrix_mean, row_mean

# The phases and spaces are defined in ir.py and explained here.
__all__ = ["FINALIZE", "LINES", "PASS1", "PASS2", "PASS3", "Space"]

# The earliest pass a value of each space can be computed in (matrix values need the line stage).
_FIRST_PASS = {
    Space.SCALAR: 0,
    Space.TENSOR: 0,
    Space.MATRIX: PASS2,
    Space.ROW: LINES,
    Space.COL: LINES,
    Space.ELEMENT: PASS1,
}
PREFIXES = {row_mean: "row_mean", col_mean: "col_mean", matrix_mean: "matrix_mean"}


def join(a: Space, b: Space) -> Space:
    """The space of a value computed from values in `a` and `b`."""
    if {a, b} == {Space.ROW, Space.COL}:
        return Space.ELEMENT
    return max(a, b)


def space_of(expr: sp.Expr, spaces: Mapping[sp.Symbol, Space]) -> Space:
    result = Space.SCALAR
    for s in expr.free_symbols:
        result = join(result, spaces.get(s, Space.SCALAR))
    return result


def extract_means(assignments: list[Assignment]) -> tuple[list[Assignment], dict[type, list[Mean]]]:
    """Replace each distinct `row_mean(e)` by `row_mean0, ...` (likewise col_mean, matrix_mean).

    The argument of each becomes an assignment of its own, `row_mean0_of = e`,
    so the passes treat the value summed like any other.
    """
    found: dict[sp.Expr, sp.Symbol] = {}
    means: dict[type, list[Mean]] = {kind: [] for kind in PREFIXES}
    named: list[Assignment] = []
    rewritten = []
    for a in assignments:
        calls = [c for c in a.expr.atoms(sp.Function) if type(c) in PREFIXES]
        for call in sorted(calls, key=sp.default_sort_key):
            if call not in found:
                kind = type(call)
                symbol = sp.Symbol(f"{PREFIXES[kind]}{len(means[kind])}")
                found[call] = symbol
                argument = sp.Symbol(f"{symbol}_of")
                named.append(Assignment(argument, call.args[0].xreplace(found)))
                means[kind].append(Mean(symbol, argument))
        # the argument is computed right before the rule that first reads its mean
        rewritten += [n for n in named if n not in rewritten]
        rewritten.append(Assignment(a.target, a.expr.xreplace(found)))
    return rewritten, means


def assign_passes(
    assignments: list[Assignment],
    spaces: dict[sp.Symbol, Space],
    passes: dict[sp.Symbol, int],
    means: dict[type, list[Mean]],
    where: str,
    earliest: Mapping[sp.Symbol, int] | None = None,
) -> tuple[dict[sp.Symbol, Space], dict[sp.Symbol, int]]:
    """The space and pass of every target, given those of the inputs.

    `spaces` and `passes` give the inputs' (arrays: pass 1 or 2; row and
    column means: per row/column, pass 2; matrix means: per matrix, pass 3;
    per-tensor reductions: pass 4). `earliest` holds targets a spec puts in a
    later pass than they need (AdamOffload's parameter update: APPLY). Raises
    SpecError for a rule a three-pass kernel cannot schedule.
    """
    earliest = earliest or {}
    spaces, passes = dict(spaces), dict(passes)
    sums = {m.expr: kind for kind, ms in means.items() for m in ms}
    for a in assignments:
        space = space_of(a.expr, spaces)
        at = max(
            [_FIRST_PASS[space], earliest.get(a.target, 0)] + [passes.get(s, 0) for s in a.expr.free_symbols]
        )
        if space in (Space.ROW, Space.COL) and at > LINES:
            raise SpecError(
                f"{where}: '{a.target}' is per {space.name.lower()} but reads a value of a later pass"
            )
        if space == Space.ELEMENT:
            at = {LINES: PASS2, FINALIZE: PASS3}.get(at, at)
        kind = sums.get(a.target)
        if kind in (row_mean, col_mean) and (space != Space.ELEMENT or at != PASS1):
            raise SpecError(
                f"{where}: the argument of a {kind.__name__} must be per element and need no mean"
            )
        if kind is matrix_mean and (space != Space.ROW):
            raise SpecError(f"{where}: the argument of a matrix_mean must be per row")
        spaces[a.target], passes[a.target] = space, at
    return spaces, passes


def defer_overwrites(
    assignments: list[Assignment], phases: Mapping[sp.Symbol, int], stores: Mapping[sp.Symbol, sp.Symbol]
) -> dict[sp.Symbol, int]:
    """`phases` with each array's new value put off to the last pass that reads its old one.

    `stores` maps each value that an array keeps (the new `g_prev`) to the array's input
    symbol (the old `g_prev`). A later pass recomputes the locals it needs from the inputs:
    MARS's third pass recomputes its corrected gradient, `g - g_prev` among it, to divide it
    by the norm of pass 1; were the new g_prev stored in pass 1, pass 3 would read it in
    place of the old. A value another pass stores is loaded there, not recomputed, so the
    search stops at it.
    """
    defined = {a.target: a.expr for a in assignments}
    phases = dict(phases)

    def reads(symbol: sp.Symbol, seen: set) -> set:
        """The inputs `symbol`'s computation reads, through the locals it recomputes."""
        found = set()
        for s in defined[symbol].free_symbols:
            if s in defined and s not in stores and s not in seen:
                seen.add(s)
                found |= reads(s, seen)
            elif s not in defined:
                found.add(s)
        return found

    for out, old in stores.items():
        if out not in defined:
            continue
        later = [phases[a.target] for a in assignments if old in reads(a.target, set())]
        if later and max(later) > phases[out]:
            phases[out] = max(later)
    return phases


# What does not vary along a row: hoisted out of the loop over its columns.
_ALONG_ROW = (Space.SCALAR, Space.TENSOR, Space.MATRIX, Space.ROW)


def hoist_rows(
    assignments: list[Assignment], spaces: Mapping[sp.Symbol, Space]
) -> tuple[list[Assignment], list[Assignment]]:
    """(per-row lines, the assignments rewritten): the arguments of each Add or Mul that do
    not vary along a row, when they include a per-row value and are more than one symbol,
    become one value per row (`z0, z1, ...`).

    Adafactor's `C*R/max(eps1, matrix_mean(R))` becomes `C*z0` with one
    `z0 = R/max(eps1, matrix_mean(R))` per row: a division per row, not per element.
    """
    table: dict[sp.Expr, sp.Symbol] = {}

    def space(expr) -> Space:
        return space_of(expr, spaces)

    def per_row(expr: sp.Expr) -> sp.Symbol:
        if expr not in table:
            table[expr] = sp.Symbol(f"z{len(table)}")
        return table[expr]

    def visit(expr):
        if not isinstance(expr, sp.Expr) or expr.is_Atom:
            return expr.func(*[visit(a) for a in expr.args]) if expr.args else expr
        if isinstance(expr, (sp.Add, sp.Mul)):
            along = [a for a in expr.args if space(a) in _ALONG_ROW]
            varying = [visit(a) for a in expr.args if space(a) not in _ALONG_ROW]
            if (
                varying
                and any(space(a) == Space.ROW for a in along)
                and (len(along) > 1 or not along[0].is_Atom)
            ):
                along = [per_row(expr.func(*along))]
            return expr.func(*along, *varying)
        return expr.func(*[visit(a) for a in expr.args])

    rewritten = [
        Assignment(a.target, visit(a.expr)) if spaces.get(a.target) == Space.ELEMENT else a
        for a in assignments
    ]
    return [Assignment(symbol, expr) for expr, symbol in table.items()], rewritten
