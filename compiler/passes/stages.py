"""Split per-element code into stages at reductions and at a separate parameter update.

Stage 1 computes everything that needs no reduction result (and, for a spec
that applies its update separately, everything but the parameter update),
stores its arrays and accumulates the reductions. Stage 2 computes the rest.
A value stage 2 needs from stage 1 is reloaded if stage 1 stored it and
recomputed if it is a local; an input that stage 1 overwrote cannot be
read again, which is a spec error.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from optforge.compiler.ir import Array, Assignment, Load, Store
from optforge.compiler.passes.cse import schedule
from optforge.compiler.spec import SpecError


@dataclass
class Split:
    first: list[Assignment]
    second: list[Assignment]
    first_stores: list[Store]
    second_stores: list[Store]
    second_loads: list[Load]


def depends_on(assignments: list[Assignment], roots: set[sp.Symbol]) -> set[sp.Symbol]:
    """Targets of `assignments` (in order) that read any of `roots`, directly or not."""
    reached = set(roots)
    for a in assignments:
        if a.expr.free_symbols & reached:
            reached.add(a.target)
    return reached - set(roots)


def split_stages(
    element: list[Assignment],
    stores: list[Store],
    arrays: list[Array],
    late: set[sp.Symbol],
    where: str,
) -> Split:
    """Stage 2 is every assignment reading a symbol in `late`, directly or not."""
    second_targets = depends_on(element, late) | {a.target for a in element if a.target in late}
    first = [a for a in element if a.target not in second_targets]
    second = [a for a in element if a.target in second_targets]
    first_stores = [s for s in stores if s.value not in second_targets]
    second_stores = [s for s in stores if s.value in second_targets]

    stored = {s.value: s.array for s in first_stores}
    overwritten = {s.array.symbol for s in first_stores}
    array_of = {a.symbol: a for a in arrays}
    local = {a.target: a for a in first}
    loads: list[Load] = []
    recomputed: list[Assignment] = []
    seen: set[sp.Symbol] = set(second_targets)

    def need(symbol: sp.Symbol) -> None:
        if symbol in seen:
            return
        seen.add(symbol)
        if symbol in stored:
            loads.append(Load(stored[symbol], symbol))
        elif symbol in array_of:
            if symbol in overwritten:
                raise SpecError(
                    f"{where}: the second stage reads the old value of '{symbol}', which the "
                    "first stage has overwritten"
                )
            loads.append(Load(array_of[symbol], symbol))
        elif symbol in local:
            recomputed.append(local[symbol])
            for s in sorted(local[symbol].expr.free_symbols, key=str):
                need(s)

    for a in second:
        for s in sorted(a.expr.free_symbols, key=str):
            need(s)
    return Split(first, schedule(recomputed + second), first_stores, second_stores, loads)
