"""The scheduler: the regions of one kernel, from its values placed in spaces and phases.

Every kernel, flat, two-stage, offload or factored, is scheduled here. Each
value has a space (where it varies) and a phase (the first one that can
compute it; see ir.py and passes/factored.assign_passes). An element pass of
phase `p` computes what its stores and sums need: a value of phase `p` it
computes; a value an earlier phase stored it reloads; a local of an earlier
phase it recomputes (recomputing is cheaper than a store and a load), and an
input an earlier phase overwrote it cannot read again, which is a spec error.
Around each element pass: its chunk prologue (per tensor, and per matrix in a
factored kernel) and its per-row lines; between the passes, the per-row and
per-column lines (LINES) and the per-tensor finalize (FINALIZE).

A two-stage kernel is this schedule with no row or column values: PASS1, then
FINALIZE, then PASS3; AdamOffload's separate update is one phase more (APPLY).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import sympy as sp

from optforge.compiler.ir import (
    FINALIZE,
    LINES,
    MATRIX,
    PASS1,
    PASS2,
    PASS3,
    Array,
    Assignment,
    DType,
    Load,
    MatrixFunction,
    Reduction,
    Region,
    Space,
    Store,
)
from optforge.compiler.passes.cse import eliminate_common_subexpressions, prune, schedule
from optforge.compiler.passes.factored import hoist_rows, space_of
from optforge.compiler.spec import BUILTIN_COUNTED, SpecError

_MEAN_NAMES = {Space.ROW: "row_mean", Space.COL: "col_mean", Space.MATRIX: "matrix_mean"}


@dataclass(frozen=True)
class Placed:
    """One branch of one kernel after hoisting, every value placed in a space and a phase."""

    element: tuple[Assignment, ...]  # per element, row, column or matrix; in order, typed with its space
    # per tensor, in order: of phase 0 (no sum read) recomputed in every pass's prologue,
    # of phase FINALIZE (reading a sum) computed once between the passes
    tensor: tuple[Assignment, ...]
    phases: Mapping[sp.Symbol, int]  # of every element target and every input that has one
    spaces: Mapping[sp.Symbol, Space]  # of every value and input that is not a step-level scalar
    arrays: tuple[Array, ...]  # the argument arrays
    stores: Mapping[sp.Symbol, Array]  # the final value of each array that changes -> the array
    reductions: tuple[Reduction, ...]  # norms (TENSOR) and means (ROW, COL, MATRIX); expr: the summand
    per_tensor_arrays: tuple[sp.Symbol, ...]  # the per-tensor inputs (weight_decay, grad_scale)
    matrices: bool  # a factored kernel: tensors seen as stacks of matrices
    where: str  # the spec's file, for errors
    matrix_functions: tuple[MatrixFunction, ...] = ()  # computed by the matrix stage (passes/matrix.py)


def gather(placed: Placed, roots: list[sp.Symbol], at: int) -> tuple[list[Assignment], list[Load], list]:
    """(what a region of phase `at` computes, what it loads, the matrix means it reads) to have
    `roots`: the values of `at` and the locals of earlier phases they read, in dependency order;
    the inputs and the values earlier phases stored, in the order they are first needed."""
    overwritten = {a.symbol for v, a in placed.stores.items() if placed.phases[v] < at}
    array_of = {a.symbol: a for a in placed.arrays}
    means = {r.symbol: r for r in placed.reductions if r.space != Space.TENSOR}
    defined = {a.target: a for a in placed.element}
    body, loads, matrix, seen = [], [], [], set()

    def need(symbol: sp.Symbol) -> None:
        if symbol in seen:
            return
        seen.add(symbol)
        stored = placed.stores.get(symbol)
        if stored is not None and placed.phases[symbol] < at:
            loads.append(Load(stored, symbol))
        elif symbol in array_of:
            if symbol in overwritten:
                raise SpecError(
                    f"{placed.where}: a later pass reads the old value of '{symbol}', which an "
                    "earlier pass has overwritten"
                )
            loads.append(Load(array_of[symbol], symbol))
        elif symbol in means:
            space = means[symbol].space
            if space == Space.MATRIX and at >= PASS2:
                matrix.append(symbol)
            elif at != LINES:
                raise SpecError(f"{placed.where}: '{symbol}' ({_MEAN_NAMES[space]}) is read in a later pass")
        elif symbol in defined:
            a = defined[symbol]
            body.append(a)
            for s in sorted(a.expr.free_symbols, key=str):
                need(s)

    for root in roots:
        need(root)
    return schedule(body), loads, sorted(matrix, key=str)


def element_passes(placed: Placed) -> tuple[int, ...]:
    """The element passes a kernel runs: a factored kernel all three; any other pass 1 and each
    later pass that computes an element value (a two-stage kernel's pass 3, or APPLY)."""
    if placed.matrices:
        return (PASS1, PASS2, PASS3)
    used = {placed.phases[a.target] for a in placed.element}
    return (PASS1, *sorted(p for p in used if p > PASS1))


def regions(placed: Placed) -> list[Region]:
    """The kernel's regions in phase order, outer loops first within a phase: per element pass
    (`element_passes`), its prologue (per tensor, or per matrix), its per-row lines (factored kernels)
    and its element loop; the per-row and per-column lines (LINES) of a factored kernel; the
    finalize (FINALIZE) where per-tensor values read the sums."""
    stray = [
        r.expr
        for r in placed.reductions
        if r.space == Space.TENSOR and placed.phases[r.expr] not in (PASS1, PASS2)
    ]
    if stray:
        raise SpecError(f"{placed.where}: a norm, rms or mean reads a value of the last pass ({stray[0]})")
    result = [r for at in element_passes(placed) for r in element_pass(placed, at)]
    if placed.matrix_functions:
        result.append(matrix_region(placed))
    if placed.matrices:
        result += line_regions(placed)
    if any(placed.phases.get(a.target) == FINALIZE for a in placed.tensor):
        result.append(finalize_region(placed, [r for r in result if r.phase > FINALIZE]))
    return sorted(result, key=lambda r: (r.phase, r.space))


def _prologue(placed: Placed) -> list[Assignment]:
    return [a for a in placed.tensor if placed.phases.get(a.target, 0) == 0]


def _means(placed: Placed, space: Space) -> list[Reduction]:
    return [r for r in placed.reductions if r.space == space]


def element_pass(placed: Placed, at: int) -> list[Region]:
    """The prologue, per-row and element regions of the element pass `at`."""
    stores = [
        Store(a, v) for v, a in placed.stores.items() if a.shape == "element" and placed.phases[v] == at
    ]
    # The arguments of the matrix functions, into their scratch matrices (all of pass 1).
    stores += [
        Store(mf.array, mf.argument) for mf in placed.matrix_functions if placed.phases[mf.argument] == at
    ]
    sums = [r for r in placed.reductions if r.space == Space.TENSOR and placed.phases[r.expr] == at]
    if at == PASS1:
        sums += _means(placed, Space.ROW) + _means(placed, Space.COL)
    roots = [s.value for s in stores] + [r.expr for r in sums]
    if at == PASS1 and not placed.matrices:
        # Outside a factored kernel pass 1 computes its whole phase in program order, and CSE
        # sees all of it before the pruning: the order the former two-stage scheduler printed,
        # kept so that no generated kernel changes (the values computed are the same).
        body, matrix = [a for a in placed.element if placed.phases[a.target] == PASS1], []
    else:
        body, loads, matrix = gather(placed, roots, at)
    if at == PASS1:  # nothing comes before it: it loads the inputs it reads in argument order
        loads = [Load(a, a.symbol) for a in placed.arrays]
    spaces = dict(placed.spaces) | {a.target: a.space for a in placed.element}
    per_matrix = [a for a in body if a.space == Space.MATRIX]
    per_row = [a for a in body if a.space == Space.ROW]
    element = [a for a in body if a.space not in (Space.MATRIX, Space.ROW)]
    hoisted_rows, element = hoist_rows(element, spaces)
    element = prune(eliminate_common_subexpressions(element, "x"), roots)
    row_lines = prune(schedule(per_row + hoisted_rows), _free(element) | set(roots))
    prologue = prune(
        eliminate_common_subexpressions(_prologue(placed) + per_matrix, "y"),
        _free(element) | _free(row_lines) | set(roots),
    )
    read = _free(element) | _free(prologue) | _free(row_lines) | set(roots)
    per_tensor = per_tensor_inputs(placed, _free(element) | _free(row_lines) | _free(prologue), prologue)
    scratch = [Load(Array(s, s.name, "tensor"), s) for s in per_tensor]
    scratch += [Load(Array(s, s.name, "matrix"), s) for s in matrix]
    result = [
        Region(
            Space.MATRIX if placed.matrices else Space.TENSOR,
            at,
            tuple(scratch),
            _typed(prologue, spaces, Space.TENSOR),
        )
    ]
    if placed.matrices:
        result.append(Region(Space.ROW, at, body=_typed(row_lines, spaces, Space.ROW)))
    element_loads = tuple(load for load in loads if load.value in read)
    result.append(
        Region(
            Space.ELEMENT,
            at,
            element_loads,
            _typed(element, spaces, Space.ELEMENT),
            tuple(stores),
            tuple(sums),
        )
    )
    return result


def matrix_region(placed: Placed) -> Region:
    """The matrix stage: once per tensor, each matrix function over its scratch matrix, which
    pass 1 filled with the argument and which holds the result for the passes after it."""
    if placed.matrices:
        raise SpecError(f"{placed.where}: a matrix function in a factored kernel")
    late = [mf for mf in placed.matrix_functions if placed.phases[mf.argument] != PASS1]
    if late:
        raise SpecError(
            f"{placed.where}: the argument of the matrix function giving '{late[0].symbol}' must be "
            "computed in the first pass (it reads a value that needs a reduction or another matrix function)"
        )
    body = tuple(
        Assignment(mf.symbol, mf.function(mf.argument, *mf.parameters), Space.TENSOR, DType.KERNEL)
        for mf in placed.matrix_functions
    )
    return Region(
        Space.TENSOR,
        MATRIX,
        tuple(Load(mf.array, mf.argument) for mf in placed.matrix_functions),
        body,
        tuple(Store(mf.array, mf.symbol) for mf in placed.matrix_functions),
    )


def line_regions(placed: Placed) -> list[Region]:
    """The per-row and per-column regions of LINES: the row and column state's updates from
    PASS1's means; the row region also computes the arguments of the matrix means and sums them."""
    spaces = dict(placed.spaces) | {a.target: a.space for a in placed.element}
    result = []
    for space, shape in ((Space.ROW, "row"), (Space.COL, "col")):
        stores = [Store(a, v) for v, a in placed.stores.items() if a.shape == shape]
        sums = _means(placed, Space.MATRIX) if space == Space.ROW else []
        roots = [s.value for s in stores] + [r.expr for r in sums]
        body, loads, _ = gather(placed, roots, LINES)
        lines = prune(eliminate_common_subexpressions(body, "x"), roots)
        read = _free(lines) | set(roots)
        loads = tuple(load for load in loads if load.value in read)
        result.append(Region(space, LINES, loads, _typed(lines, spaces, space), tuple(stores), tuple(sums)))
    return result


def finalize_region(placed: Placed, after: list[Region]) -> Region:
    """The per-tensor values the passes after FINALIZE read, from the sums before it and the
    element count `numel` they carry (in float64): it loads the per-tensor inputs it reads and
    stores the values it hands on."""
    late = {a.target for a in placed.tensor if placed.phases.get(a.target) == FINALIZE}
    late |= {r.symbol for r in placed.reductions if r.space == Space.TENSOR} | set(BUILTIN_COUNTED)
    outputs = []
    for region in after:
        outputs += [ld.value for ld in region.loads if ld.value in late and ld.value not in outputs]
    body = prune(eliminate_common_subexpressions(list(placed.tensor), "y"), outputs)
    spaces = dict(placed.spaces)
    inputs = [s for s in placed.per_tensor_arrays if s in _free(body)]
    return Region(
        Space.TENSOR,
        FINALIZE,
        tuple(Load(Array(s, s.name, "tensor"), s) for s in inputs),
        _typed(body, spaces, Space.TENSOR, DType.FLOAT64),
        tuple(Store(Array(s, s.name, "tensor"), s) for s in outputs),
    )


def per_tensor_inputs(placed: Placed, read: set[sp.Symbol], prologue: list[Assignment]) -> list[sp.Symbol]:
    """The per-tensor values a pass takes as arguments: of those it reads, the ones its prologue
    does not compute; the input arrays (weight_decay, grad_scale) first, then by name."""
    defined = {a.target for a in prologue}
    inputs = {s for s in read if placed.spaces.get(s) == Space.TENSOR} - defined
    builtin = [s for s in placed.per_tensor_arrays if s in inputs]
    return builtin + sorted(inputs - set(builtin), key=str)


def _typed(
    assignments: list[Assignment], spaces: dict, floor: Space, dtype: DType = DType.KERNEL
) -> tuple[Assignment, ...]:
    """`assignments` typed: each in the space of what it reads (at least `floor`), in `dtype`."""
    typed = []
    for a in assignments:
        space = max(floor, spaces[a.target] if a.target in spaces else space_of(a.expr, spaces))
        spaces[a.target] = space
        typed.append(Assignment(a.target, a.expr, space, dtype))
    return tuple(typed)


def _free(assignments) -> set[sp.Symbol]:
    return set().union(*(a.expr.free_symbols for a in assignments)) if assignments else set()
