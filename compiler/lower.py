"""Run the passes: one spec and one flag variant in, one `ir.Kernel` out."""

from __future__ import annotations

import re

import sympy as sp

from optforge.compiler import spec as S
from optforge.compiler.ir import Array, Kernel, Store
from optforge.compiler.passes.cse import eliminate_common_subexpressions, prune
from optforge.compiler.passes.hoist import hoist
from optforge.compiler.passes.levels import Level
from optforge.compiler.passes.specialize import specialize
from optforge.compiler.passes.ssa import to_ssa


def input_levels(spec: S.Spec) -> dict[sp.Symbol, Level]:
    """The binding-time level of every symbol a rule may read before assigning it."""
    levels = {s: Level.ELEMENT for s in S.BUILTIN_ELEMENT}
    levels |= {s: Level.STEP for s in S.BUILTIN_STEP}
    levels |= {s: Level.TENSOR for s in S.BUILTIN_TENSOR}
    levels |= {h.symbol: Level.STEP for h in spec.hypers}
    levels |= {s.symbol: Level.ELEMENT for s in spec.state}
    return levels


def lower(spec: S.Spec, variant: dict[sp.Symbol, bool]) -> Kernel:
    states = [s for s in spec.state if S.active(s.when, variant)]
    arrays = [Array(S.w, "param"), Array(S.g, "grad")] + [Array(s.symbol, s.name) for s in states]
    assignments, outputs = to_ssa(specialize(spec, variant), {a.symbol for a in arrays})
    hoisted = hoist(assignments, input_levels(spec))

    element = eliminate_common_subexpressions(hoisted.element, "x")
    tensor = eliminate_common_subexpressions(hoisted.tensor, "y")
    stores = tuple(Store(a, outputs[a.symbol]) for a in arrays if a.symbol in outputs)
    element = prune(element, [s.value for s in stores])
    tensor = prune(tensor, _free(element))

    used = _free(element) | _free(tensor)
    levels = hoisted.levels
    scalars = tuple(sorted((s for s in used if levels.get(s) == Level.STEP), key=_order(spec)))
    tensor_inputs = tuple(s for s in S.BUILTIN_TENSOR if s in used)
    host = eliminate_common_subexpressions(hoisted.step, "h")
    host = prune(host, scalars)
    loaded = _free(element) | _free(tensor)
    return Kernel(
        spec_name=spec.name,
        variant=tuple((flag.name, variant[flag.symbol]) for flag in spec.flags),
        host_inputs=(S.t, S.lr, *(h.symbol for h in spec.hypers)),
        host=tuple(host),
        scalars=scalars,
        tensor_inputs=tensor_inputs,
        tensor=tuple(tensor),
        arrays=tuple(arrays),
        loads=tuple(a for a in arrays if a.symbol in loaded),
        element=tuple(element),
        stores=stores,
    )


def _free(assignments) -> set[sp.Symbol]:
    return set().union(*(a.expr.free_symbols for a in assignments))


def _order(spec: S.Spec):
    """Sort key for kernel scalars: hyperparameters, t, lr, then s0, s1, ... numerically."""
    first = [h.symbol for h in spec.hypers] + list(S.BUILTIN_STEP)

    def key(symbol: sp.Symbol):
        if symbol in first:
            return (0, first.index(symbol), "")
        match = re.fullmatch(r"([a-z]+)(\d+)", symbol.name)
        if match:
            return (1, int(match.group(2)), match.group(1))
        return (2, 0, symbol.name)

    return key
