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
    MATRIX,
    PASS1,
    PASS2,
    Array,
    Assignment,
    DType,
    Kernel,
    MatrixFunction,
    Mean,
    Reduction,
    Region,
    Space,
)
from optforge.compiler.passes.branches import branches, choose_branch, find_guards
from optforge.compiler.passes.cse import eliminate_common_subexpressions, prune
from optforge.compiler.passes.defer import deferred_stores
from optforge.compiler.passes.factored import assign_passes, extract_means
from optforge.compiler.passes.group_sums import extract_group_sums
from optforge.compiler.passes.hoist import Hoisted, hoist
from optforge.compiler.passes.levels import Level, assign_levels
from optforge.compiler.passes.matrix import extract_matrix_functions
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
    levels |= {s: Level.TENSOR for s in S.BUILTIN_TENSOR + S.BUILTIN_COUNTED}
    levels |= {h.symbol: Level.STEP for h in spec.hypers}
    levels |= {s.symbol: Level.ELEMENT for s in spec.state}
    levels |= {s: Level.STEP for s in S.step_inputs(spec)}  # the step rules' values, once per step
    return levels


def transition_spec(spec: S.Spec, transition: S.Transition) -> S.Spec:
    """A mode transition (`S.Modes`) as a spec of its own, lowered like any update: its rules,
    and every state kept as it is (so no store: passes/unchanged.py), the step state read as
    it stands (its step rules keep each value). Named `<spec>__<method>`."""
    keep = [S.Rule(s.symbol, s.symbol, s.when) for s in spec.state]
    return S.Spec(
        name=f"{spec.name}__{transition.method}",
        title=f"{spec.title}.{transition.method}",
        source=spec.source,
        hypers=spec.hypers,
        flags=spec.flags,
        state=spec.state,
        rules=(*transition.rules, *keep),
        decay="decoupled",
        host_dtype=spec.host_dtype,
        step_state=spec.step_state,
        step_rules=tuple(S.Rule(s.symbol, s.symbol) for s in spec.step_state),
    )


def transitions(spec: S.Spec) -> list[tuple[str, S.Spec, list[Kernel]]]:
    """(method, its spec, one kernel per flag variant) of each mode transition."""
    if spec.modes is None:
        return []
    result = []
    for transition in (spec.modes.enter, spec.modes.leave):
        derived = transition_spec(spec, transition)
        kernels = [kernel for variant in derived.variants() for kernel in lower(derived, variant)]
        if any(k.guards for k in kernels):
            raise S.SpecError(f"{spec.where}: transition '{transition.method}' has host-side branches")
        result.append((transition.method, derived, kernels))
    return result


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
    matrix_functions: list[MatrixFunction]  # each computed by the matrix stage (passes/matrix.py)
    # (sum rule output, its late name) of a spec with group sums (passes/group_sums.py)
    late: tuple[tuple[sp.Symbol, sp.Symbol], ...] = ()


def front(spec: S.Spec, variant: dict[sp.Symbol, bool]) -> Front:
    """specialize -> ssa -> means -> reductions -> levels -> guards, for any kind of kernel."""
    states = [s for s in spec.state if S.active(s.when, variant)]
    arrays = [Array(S.w, "param"), Array(S.g, "grad")] + [Array(s.symbol, s.name, s.shape) for s in states]
    assignments, outputs = to_ssa(specialize(spec, variant), {a.symbol for a in arrays})
    assignments, group = extract_group_sums(assignments, S.sum_outputs(spec))
    assignments, matrix_functions = extract_matrix_functions(assignments, spec.where)
    assignments, found = extract_means(assignments)
    assignments, reductions = extract_reductions(assignments)
    # Each reduction is summed over a per-element value: give it a name so the
    # passes treat it like any other element-level result.
    squares, reductions = summands(assignments, reductions)
    assignments += squares
    reductions += group.reductions  # their summands are in place already
    means = [_mean(m, kind) for kind, ms in found.items() for m in ms]
    # To the hoister, per-row, per-column and per-matrix values vary like elements do.
    levels = input_levels(spec) | {r.symbol: Level.TENSOR for r in reductions}
    levels |= {m.symbol: Level.ELEMENT for m in means}
    levels |= dict.fromkeys(S.MATRIX_TENSOR, Level.TENSOR)
    # A matrix function's result varies per element; the stage before it stores its argument.
    levels |= {mf.symbol: Level.ELEMENT for mf in matrix_functions}
    # The sum rules' values, which the stage after the group sums reads: per tensor, as a
    # finalize's values are (the run-time hands them over in Scratch.sum_values).
    levels |= {name: Level.TENSOR for _, name in group.late}
    guards = find_guards(assignments, assign_levels(assignments, levels))
    sums = [
        Reduction(r.symbol, s.target, r.mean, r.squared, plain=r.plain) for r, s in zip(reductions, squares)
    ]
    sums += group.reductions
    return Front(arrays, assignments, outputs, sums, means, levels, guards, matrix_functions, group.late)


def _mean(mean: Mean, kind) -> Reduction:
    return Reduction(mean.symbol, mean.expr, True, False, MEAN_SPACE[kind])


def lower(spec: S.Spec, variant: dict[sp.Symbol, bool]) -> list[Kernel]:
    """The kernels of one flag variant: one per combination of host-side branch values."""
    f = front(spec, variant)
    kernels = []
    for values in branches(f.guards):
        exprs = choose_branch([a.expr for a in f.assignments], f.guards, values)
        chosen = [Assignment(a.target, e) for a, e in zip(f.assignments, exprs)]
        hoisted = summed_per_element(hoist(chosen, f.levels), f.reductions)
        placed = place(spec, variant, f, chosen, hoisted)
        found = regions(placed)
        kernels.append(
            Kernel(
                **step_fields(spec, variant, f.guards, values, hoisted, _free_in(found)),
                arrays=tuple(f.arrays),
                regions=tuple(found),
                matrices=placed.matrices,
                matrix_functions=tuple(f.matrix_functions),
                late=f.late,
            )
        )
    return kernels


def summed_per_element(hoisted: Hoisted, reductions: list[Reduction]) -> Hoisted:
    """A reduction's summand that does not vary over the tensor in this branch stays in the
    element loop, which sums it: Prodigy's group sums are 0 for a group at lr 0, a branch
    chosen on the host, and the hoister would take the 0 out of the loop."""
    summands = {r.expr for r in reductions}
    moved = [a for a in hoisted.step + hoisted.tensor if a.target in summands]
    if not moved:
        return hoisted
    return Hoisted(
        step=[a for a in hoisted.step if a.target not in summands],
        tensor=[a for a in hoisted.tensor if a.target not in summands],
        element=moved + hoisted.element,
        levels=hoisted.levels | {a.target: Level.ELEMENT for a in moved},
    )


def place(spec: S.Spec, variant, f: Front, chosen: list[Assignment], hoisted: Hoisted) -> Placed:
    """Every value of one branch in its space and phase (passes/factored.assign_passes).

    The inputs': arrays by their shape, in pass 1 (row and column state: in LINES); row and
    column means from LINES, matrix means from pass 2; the per-tensor sums and the element
    count (`numel`), and the per-tensor values that read them, from FINALIZE. A state whose old
    value a later pass reads is stored in that pass (passes/defer.py).
    """
    outputs = changed_outputs(f.outputs, chosen)  # a branch may leave a state as it was
    shape = S.MATRIX_TENSOR if spec.tensor_rank == 2 else ()
    late = [name for _, name in f.late]
    per_tensor = [
        *S.BUILTIN_TENSOR,
        *S.BUILTIN_COUNTED,
        *shape,
        *late,
        *(r.symbol for r in f.reductions),
        *(a.target for a in hoisted.tensor),
    ]
    spaces = {a.symbol: SHAPE_SPACE[a.shape] for a in f.arrays} | {m.symbol: m.space for m in f.means}
    spaces |= dict.fromkeys(per_tensor, Space.TENSOR)
    phases = {a.symbol: PASS1 if a.shape == "element" else LINES for a in f.arrays}
    phases |= {m.symbol: MEAN_PHASE[m.space] for m in f.means} | {r.symbol: FINALIZE for r in f.reductions}
    phases |= dict.fromkeys(S.BUILTIN_COUNTED, FINALIZE)
    phases |= dict.fromkeys(late, FINALIZE)  # filled by the run-time after the group sums
    # A matrix function's result is per element, ready after the matrix stage.
    spaces |= {mf.symbol: Space.ELEMENT for mf in f.matrix_functions}
    phases |= {mf.symbol: MATRIX for mf in f.matrix_functions}
    for a in hoisted.tensor:
        # After a matrix stage the per-tensor values are a finalize's too, in float64, as torch
        # computes such scalars in Python (Muon's 1 - lr*weight_decay, rounded once to float32).
        if f.matrix_functions or any(phases.get(s) == FINALIZE for s in a.expr.free_symbols):
            phases[a.target] = FINALIZE
    means = {
        kind: [Mean(m.symbol, m.expr) for m in f.means if m.space == k] for kind, k in MEAN_SPACE.items()
    }
    # AdamOffload's parameter update runs on its own, after everything else.
    earliest = {outputs[S.w]: APPLY} if spec.separate_apply else {}
    # (a summand is summed by an element pass, even one that reads no element: summed_per_element)
    earliest |= {r.expr: PASS1 for r in f.reductions if r.space == Space.TENSOR}
    stores = {outputs[a.symbol]: a for a in f.arrays if a.symbol in outputs}
    while True:  # phases only grow, so this ends
        placed_spaces, placed_phases = assign_passes(
            hoisted.element, spaces, phases, means, spec.where, earliest
        )
        later = deferred_stores(hoisted.element, placed_phases, stores)
        if all(earliest.get(v, 0) >= at for v, at in later.items()):
            break
        earliest = earliest | {v: max(earliest.get(v, 0), at) for v, at in later.items()}
    spaces, phases = placed_spaces, placed_phases
    return Placed(
        element=tuple(Assignment(a.target, a.expr, spaces[a.target]) for a in hoisted.element),
        tensor=tuple(hoisted.tensor),
        phases=phases,
        spaces=spaces,
        arrays=tuple(f.arrays),
        # (a matrix function's result is in its scratch matrix after the matrix stage)
        stores=stores | {mf.symbol: mf.array for mf in f.matrix_functions},
        reductions=tuple(f.reductions + f.means),
        per_tensor_arrays=(*S.BUILTIN_TENSOR, *shape, *late),
        matrix_functions=tuple(f.matrix_functions),
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
        host_inputs=(S.t, S.lr, *(h.symbol for h in spec.hypers), *S.step_inputs(spec)),
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
    first = [h.symbol for h in spec.hypers] + list(S.BUILTIN_STEP) + list(S.step_inputs(spec))

    def key(symbol: sp.Symbol):
        if symbol in first:
            return (0, first.index(symbol), "")
        match = re.fullmatch(r"([a-z]+)(\d+)", symbol.name)
        if match:
            return (1, int(match.group(2)), match.group(1))
        return (2, 0, symbol.name)

    return key
