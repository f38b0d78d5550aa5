"""Run the passes: one spec and one flag variant in, one `ir.Kernel` per host-side branch out.

specialize -> ssa -> means, reductions -> levels -> branches -> hoist -> spaces and phases
(passes/factored.py) -> regions (passes/schedule.py: compute, reload, recompute) -> cse

Every kind of kernel (flat, two-stage, offload, factored) takes the same passes;
they differ only in the phases their values land in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sympy as sp

from optforge.compiler import spec as S
from optforge.compiler.ir import (
    APPLY,
    FINALIZE,
    LINES,
    PASS1,
    PASS2,
    Array,
    Assignment,
    DType,
    Kernel,
    Mean,
    Reduction,
    Region,
    Space,
)
from optforge.compiler.passes.branches import branches, choose_branch, find_guards
from optforge.compiler.passes.cse import eliminate_common_subexpressions, prune
from optforge.compiler.passes.factored import assign_passes, defer_overwrites, extract_means
from optforge.compiler.passes.hoist import Hoisted, hoist
from optforge.compiler.passes.levels import Level, assign_levels
from optforge.compiler.passes.reductions import extract_reductions, summands
from optforge.compiler.passes.schedule import Placed, regions
from optforge.compiler.passes.specialize import specialize
from optforge.compiler.passes.ssa import to_ssa
from optforge.compiler.passes.unchanged import changed_outputs

SHAPE_SPACE = {"element": Space.ELEMENT, "row": Space.ROW, "col": Space.COL}
MEAN_SPACE = {S.row_mean: Space.ROW, S.col_mean: Space.COL, S.matrix_mean: Space.MATRIX}
# The phase from which each mean is ready: row and column means after pass 1, matrix means after LINES.
MEAN_PHASE = {Space.ROW: LINES, Space.COL: LINES, Space.MATRIX: PASS2}


def input_levels(spec: S.Spec) -> dict[sp.Symbol, Level]:
    """The binding-time level of every symbol a rule may read before assigning it."""
    levels = {s: Level.ELEMENT for s in S.BUILTIN_ELEMENT}
    levels |= {s: Level.STEP for s in S.BUILTIN_STEP}
    levels |= {s: Level.TENSOR for s in S.BUILTIN_TENSOR}
    levels |= {h.symbol: Level.STEP for h in spec.hypers}
    levels |= {s.symbol: Level.ELEMENT for s in spec.state}
    return levels


@dataclass(frozen=True)
class Front:
    """One variant after the passes every kernel shares, before a branch is chosen."""

    arrays: list[Array]
    assignments: list[Assignment]  # single-assignment form, reductions and means named
    outputs: dict[sp.Symbol, sp.Symbol]  # array symbol -> its final value
    reductions: list[Reduction]  # per-tensor norms; `expr` the summand (`norm0_of`)
    means: list[Reduction]  # row, column and matrix means; `expr` the value averaged
    levels: dict[sp.Symbol, Level]  # of the inputs, the reductions and the means
    guards: list[sp.Expr]


def front(spec: S.Spec, variant: dict[sp.Symbol, bool]) -> Front:
    """specialize -> ssa -> means -> reductions -> levels -> guards, for any kind of kernel."""
    states = [s for s in spec.state if S.active(s.when, variant)]
    arrays = [Array(S.w, "param"), Array(S.g, "grad")] + [Array(s.symbol, s.name, s.shape) for s in states]
    assignments, outputs = to_ssa(specialize(spec, variant), {a.symbol for a in arrays})
    assignments, found = extract_means(assignments)
    assignments, reductions = extract_reductions(assignments)
    # Each reduction is summed over a per-element value: give it a name so the
    # passes treat it like any other element-level result.
    squares, reductions = summands(assignments, reductions)
    assignments += squares
    means = [_mean(m, kind) for kind, ms in found.items() for m in ms]
    # To the hoister, per-row, per-column and per-matrix values vary like elements do.
    levels = input_levels(spec) | {r.symbol: Level.TENSOR for r in reductions}
    levels |= {m.symbol: Level.ELEMENT for m in means}
    guards = find_guards(assignments, assign_levels(assignments, levels))
    sums = [Reduction(r.symbol, s.target, r.mean, r.squared) for r, s in zip(reductions, squares)]
    return Front(arrays, assignments, outputs, sums, means, levels, guards)


def _mean(mean: Mean, kind) -> Reduction:
    return Reduction(mean.symbol, mean.expr, True, False, MEAN_SPACE[kind])


def lower(spec: S.Spec, variant: dict[sp.Symbol, bool]) -> list[Kernel]:
    """The kernels of one flag variant: one per combination of host-side branch values."""
    f = front(spec, variant)
    kernels = []
    for values in branches(f.guards):
        exprs = choose_branch([a.expr for a in f.assignments], f.guards, values)
        chosen = [Assignment(a.target, e) for a, e in zip(f.assignments, exprs)]
        hoisted = hoist(chosen, f.levels)
        placed = place(spec, variant, f, chosen, hoisted)
        found = regions(placed)
        kernels.append(
            Kernel(
                **step_fields(spec, variant, f.guards, values, hoisted, _free_in(found)),
                arrays=tuple(f.arrays),
                regions=tuple(found),
                matrices=placed.matrices,
            )
        )
    return kernels


def place(spec: S.Spec, variant, f: Front, chosen: list[Assignment], hoisted: Hoisted) -> Placed:
    """Every value of one branch in its space and phase (passes/factored.assign_passes).

    The inputs': arrays by their shape, in pass 1 (row and column state: in LINES); row and
    column means from LINES, matrix means from pass 2; the per-tensor sums, and the per-tensor
    values that read them, from FINALIZE.
    """
    outputs = changed_outputs(f.outputs, chosen)  # a branch may leave a state as it was
    per_tensor = [*S.BUILTIN_TENSOR, *(r.symbol for r in f.reductions), *(a.target for a in hoisted.tensor)]
    spaces = {a.symbol: SHAPE_SPACE[a.shape] for a in f.arrays} | {m.symbol: m.space for m in f.means}
    spaces |= dict.fromkeys(per_tensor, Space.TENSOR)
    phases = {a.symbol: PASS1 if a.shape == "element" else LINES for a in f.arrays}
    phases |= {m.symbol: MEAN_PHASE[m.space] for m in f.means} | {r.symbol: FINALIZE for r in f.reductions}
    for a in hoisted.tensor:
        if any(phases.get(s) == FINALIZE for s in a.expr.free_symbols):
            phases[a.target] = FINALIZE
    means = {
        kind: [Mean(m.symbol, m.expr) for m in f.means if m.space == k] for kind, k in MEAN_SPACE.items()
    }
    # AdamOffload's parameter update runs on its own, after everything else.
    earliest = {outputs[S.w]: APPLY} if spec.separate_apply else {}
    spaces, phases = assign_passes(hoisted.element, spaces, phases, means, spec.where, earliest)
    stored = {outputs[a.symbol]: a.symbol for a in f.arrays if a.symbol in outputs}
    phases = defer_overwrites(hoisted.element, phases, stored)
    return Placed(
        element=tuple(Assignment(a.target, a.expr, spaces[a.target]) for a in hoisted.element),
        tensor=tuple(hoisted.tensor),
        phases=phases,
        spaces=spaces,
        arrays=tuple(f.arrays),
        stores={outputs[a.symbol]: a for a in f.arrays if a.symbol in outputs},
        reductions=tuple(f.reductions + f.means),
        per_tensor_arrays=S.BUILTIN_TENSOR,
        matrices=S.is_factored(spec, variant),
        where=spec.where,
    )


def step_fields(spec: S.Spec, variant, guards, values, hoisted, used: set[sp.Symbol]) -> dict:
    """The fields every kernel has: its variant and branch, and the host code computing
    the step-level scalars (of those in `used`) and the guards."""
    scalars = tuple(sorted((s for s in used if hoisted.levels.get(s) == Level.STEP), key=_order(spec)))
    host = eliminate_common_subexpressions(hoisted.step, "h", guarded=True)
    guard_symbols = set().union(*(g.free_symbols for g in guards)) if guards else set()
    return dict(
        spec_name=spec.name,
        variant=tuple((flag.name, variant[flag.symbol]) for flag in spec.flags),
        guards=tuple(guards),
        branch=tuple(values),
        host_inputs=(S.t, S.lr, *(h.symbol for h in spec.hypers)),
        host=_on_host(prune(host, scalars)),
        guard_host=_on_host(prune(host, guard_symbols)),
        scalars=scalars,
    )


def _on_host(assignments: list[Assignment]) -> tuple[Assignment, ...]:
    """Step-level code, typed: once per step, in the spec's host dtype."""
    return tuple(Assignment(a.target, a.expr, Space.SCALAR, DType.HOST) for a in assignments)


def _free_in(found: list[Region]) -> set[sp.Symbol]:
    """The symbols the regions' code reads."""
    return set().union(*(a.expr.free_symbols for r in found for a in r.body))


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
