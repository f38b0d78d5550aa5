"""Run the passes: one spec and one flag variant in, one `ir.Kernel` per host-side branch out.

specialize -> ssa -> reductions -> levels -> branches -> hoist -> stages -> cse
"""

from __future__ import annotations

import re

import sympy as sp

from optforge.compiler import spec as S
from optforge.compiler.ir import Array, Assignment, Kernel, Load, Reduction, Stage, Store
from optforge.compiler.passes.branches import branches, choose_branch, find_guards
from optforge.compiler.passes.cse import eliminate_common_subexpressions, prune
from optforge.compiler.passes.hoist import hoist
from optforge.compiler.passes.levels import Level, assign_levels
from optforge.compiler.passes.reductions import extract_reductions, summands
from optforge.compiler.passes.specialize import specialize
from optforge.compiler.passes.ssa import to_ssa
from optforge.compiler.passes.stages import depends_on, split_stages
from optforge.compiler.passes.unchanged import changed_outputs


def input_levels(spec: S.Spec) -> dict[sp.Symbol, Level]:
    """The binding-time level of every symbol a rule may read before assigning it."""
    levels = {s: Level.ELEMENT for s in S.BUILTIN_ELEMENT}
    levels |= {s: Level.STEP for s in S.BUILTIN_STEP}
    levels |= {s: Level.TENSOR for s in S.BUILTIN_TENSOR}
    levels |= {h.symbol: Level.STEP for h in spec.hypers}
    levels |= {s.symbol: Level.ELEMENT for s in spec.state}
    return levels


def lower(spec: S.Spec, variant: dict[sp.Symbol, bool]) -> list[Kernel]:
    """The kernels of one flag variant: one per combination of host-side branch values.

    A variant with its rank flag set is a factored one (see lower_factored.py).
    """
    if S.is_factored(spec, variant):
        from optforge.compiler.lower_factored import lower_factored

        return lower_factored(spec, variant)
    states = [s for s in spec.state if S.active(s.when, variant)]
    arrays = [Array(S.w, "param"), Array(S.g, "grad")] + [Array(s.symbol, s.name) for s in states]
    assignments, outputs = to_ssa(specialize(spec, variant), {a.symbol for a in arrays})
    assignments, reductions = extract_reductions(assignments)
    # Each reduction is summed over a per-element value: give it a name so the
    # passes treat it like any other element-level result.
    squares, reductions = summands(assignments, reductions)
    assignments += squares
    levels = input_levels(spec) | {r.symbol: Level.TENSOR for r in reductions}
    levels = assign_levels(assignments, levels)
    guards = find_guards(assignments, levels)
    kernels = []
    for values in branches(guards):
        exprs = choose_branch([a.expr for a in assignments], guards, values)
        chosen = [Assignment(a.target, e) for a, e in zip(assignments, exprs)]
        kernels.append(
            _lower_branch(spec, variant, arrays, outputs, chosen, reductions, squares, guards, values)
        )
    return kernels


def _lower_branch(spec, variant, arrays, outputs, assignments, reductions, squares, guards, values):
    hoisted = hoist(assignments, input_levels(spec) | {r.symbol: Level.TENSOR for r in reductions})
    outputs = changed_outputs(outputs, assignments)  # a branch may leave a state as it was
    stores = [Store(a, outputs[a.symbol]) for a in arrays if a.symbol in outputs]
    reduced = {r.symbol for r in reductions}
    finalize = [a for a in hoisted.tensor if a.target in depends_on(hoisted.tensor, reduced)]
    late = reduced | {a.target for a in finalize}
    if spec.separate_apply:
        late.add(outputs[S.w])
    split = split_stages(hoisted.element, stores, arrays, late, spec.where)
    # Stage 1 sums the squares of each `norm<k>_of`.
    partial_sums = tuple(
        Reduction(r.symbol, s.target, r.mean, r.squared) for r, s in zip(reductions, squares)
    )
    prologue = [a for a in hoisted.tensor if a not in finalize]
    levels = hoisted.levels

    first = _stage(
        split.first, split.first_stores, prologue, arrays, levels, [s.target for s in squares], partial_sums
    )
    stages = [first]
    finalize_outputs: tuple[sp.Symbol, ...] = ()
    if split.second:
        second = _stage(
            split.second, split.second_stores, prologue, arrays, levels, [], (), split.second_loads
        )
        finalize_outputs = tuple(s for s in second.per_tensor if s in late)
        stages.append(second)
    finalize = prune(
        eliminate_common_subexpressions(hoisted.tensor if finalize else [], "y"),
        finalize_outputs,
    )

    used = _free(finalize)
    for stage in stages:
        used |= _free(stage.element) | _free(stage.tensor)
    return Kernel(
        **step_fields(spec, variant, guards, values, hoisted, used),
        arrays=tuple(arrays),
        stages=tuple(stages),
        finalize=tuple(finalize),
        finalize_outputs=finalize_outputs,
    )


def step_fields(spec: S.Spec, variant, guards, values, hoisted, used: set[sp.Symbol]) -> dict:
    """The fields every kernel has: its variant and branch, and the host code computing
    the step-level scalars (of those in `used`) and the guards."""
    scalars = tuple(sorted((s for s in used if hoisted.levels.get(s) == Level.STEP), key=_order(spec)))
    host = eliminate_common_subexpressions(hoisted.step, "h")
    guard_symbols = set().union(*(g.free_symbols for g in guards)) if guards else set()
    return dict(
        spec_name=spec.name,
        variant=tuple((flag.name, variant[flag.symbol]) for flag in spec.flags),
        guards=tuple(guards),
        branch=tuple(values),
        host_inputs=(S.t, S.lr, *(h.symbol for h in spec.hypers)),
        host=tuple(prune(host, scalars)),
        guard_host=tuple(prune(host, guard_symbols)),
        scalars=scalars,
    )


def _stage(element, stores, prologue, arrays, levels, keep, reductions, loads=None) -> Stage:
    element = eliminate_common_subexpressions(element, "x")
    element = prune(element, [s.value for s in stores] + list(keep))
    if loads is None:  # the first stage loads the inputs it reads
        read = _free(element)
        loads = [Load(a, a.symbol) for a in arrays if a.symbol in read]
    tensor = prune(eliminate_common_subexpressions(prologue, "y"), _free(element))
    return Stage(
        per_tensor=per_tensor_inputs(_free(element), tensor, levels),
        tensor=tuple(tensor),
        loads=tuple(loads),
        element=tuple(element),
        stores=tuple(stores),
        reductions=tuple(reductions),
    )


def per_tensor_inputs(read: set[sp.Symbol], tensor: list[Assignment], levels) -> tuple[sp.Symbol, ...]:
    """The per-tensor values a stage takes as arguments: of those its element code reads
    (`read`) and its tensor lines read, the ones no tensor line defines; the built-in ones
    (weight_decay, grad_scale) first, then those computed between the stages."""
    defined = {a.target for a in tensor}
    inputs = {s for s in read | _free(tensor) if levels.get(s) == Level.TENSOR} - defined
    builtin = [s for s in S.BUILTIN_TENSOR if s in inputs]
    return tuple(builtin + sorted(inputs - set(builtin), key=str))


def _free(assignments) -> set[sp.Symbol]:
    return set().union(*(a.expr.free_symbols for a in assignments)) if assignments else set()


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
