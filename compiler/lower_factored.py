"""Lower a factored variant (its rank flag set): one `ir.FactoredKernel` per host-side branch.

specialize -> ssa -> means, reductions -> branches -> hoist -> spaces and passes
(passes/factored.py) -> per pass: what it computes, loads, recomputes -> cse

The same passes as `lower.lower` up to hoisting; then, instead of two stages
split at reductions, three element passes around the per-row and
per-column code and the per-tensor finalize.
"""

from __future__ import annotations

import sympy as sp

from optforge.compiler import spec as S
from optforge.compiler.ir import (
    Array,
    Assignment,
    FactoredKernel,
    LineStage,
    Load,
    Reduction,
    Stage,
    Store,
)
from optforge.compiler.lower import _free, input_levels, per_tensor_inputs, step_fields
from optforge.compiler.passes.branches import branches, choose_branch, find_guards
from optforge.compiler.passes.cse import eliminate_common_subexpressions, prune, schedule
from optforge.compiler.passes.factored import (
    FINALIZE,
    LINES,
    PASS1,
    PASS2,
    PASS3,
    Space,
    assign_passes,
    extract_means,
    hoist_rows,
)
from optforge.compiler.passes.hoist import hoist
from optforge.compiler.passes.levels import Level, assign_levels
from optforge.compiler.passes.reductions import extract_reductions, summands
from optforge.compiler.passes.specialize import specialize
from optforge.compiler.passes.ssa import to_ssa
from optforge.compiler.passes.stages import depends_on
from optforge.compiler.passes.unchanged import changed_outputs

SHAPE_SPACE = {"element": Space.ELEMENT, "row": Space.ROW, "col": Space.COL}


def lower_factored(spec: S.Spec, variant: dict[sp.Symbol, bool]) -> list[FactoredKernel]:
    states = [s for s in spec.state if S.active(s.when, variant)]
    arrays = [Array(S.w, "param"), Array(S.g, "grad")] + [Array(s.symbol, s.name, s.shape) for s in states]
    assignments, outputs = to_ssa(specialize(spec, variant), {a.symbol for a in arrays})
    assignments, means = extract_means(assignments)
    assignments, reductions = extract_reductions(assignments)
    squares, reductions = summands(assignments, reductions)
    assignments += squares
    # To the hoister, per-row, per-column and per-matrix values vary like elements do.
    levels = input_levels(spec) | {a.symbol: Level.ELEMENT for a in arrays}
    levels |= {r.symbol: Level.TENSOR for r in reductions}
    levels |= {m.symbol: Level.ELEMENT for ms in means.values() for m in ms}
    guards = find_guards(assignments, assign_levels(assignments, levels))
    kernels = []
    for values in branches(guards):
        exprs = choose_branch([a.expr for a in assignments], guards, values)
        chosen = [Assignment(a.target, e) for a, e in zip(assignments, exprs)]
        plan = _Plan(spec, arrays, outputs, chosen, reductions, squares, means, levels)
        kernels.append(plan.kernel(variant, guards, values))
    return kernels


class _Plan:
    """One branch: where each value is computed, and what each pass loads and recomputes."""

    def __init__(self, spec, arrays, outputs, assignments, reductions, squares, means, levels):
        self.spec, self.arrays, self.means = spec, arrays, means
        hoisted = hoist(assignments, levels)
        self.hoisted = hoisted
        outputs = changed_outputs(outputs, assignments)
        self.stores = {outputs[a.symbol]: a for a in arrays if a.symbol in outputs}
        reduced = {r.symbol for r in reductions}
        self.late = depends_on(hoisted.tensor, reduced)
        self.prologue = [a for a in hoisted.tensor if a.target not in self.late]

        row, col, matrix = (means[k] for k in (S.row_mean, S.col_mean, S.matrix_mean))
        spaces = {a.symbol: SHAPE_SPACE[a.shape] for a in arrays}
        spaces |= {m.symbol: Space.ROW for m in row} | {m.symbol: Space.COL for m in col}
        spaces |= {m.symbol: Space.MATRIX for m in matrix}
        passes = {a.symbol: PASS1 if a.shape == "element" else LINES for a in arrays}
        passes |= {m.symbol: LINES for m in row + col} | {m.symbol: PASS2 for m in matrix}
        passes |= {s: FINALIZE for s in reduced | self.late}
        self.spaces, self.passes = assign_passes(hoisted.element, spaces, passes, means, spec.where)
        self.defined = {a.target: a for a in hoisted.element}
        self.reductions = {
            k: tuple(
                Reduction(r.symbol, s.target, r.mean, r.squared)
                for r, s in zip(reductions, squares)
                if self.passes[s.target] == k
            )
            for k in (PASS1, PASS2)
        }
        stray = [s.target for s in squares if self.passes[s.target] not in (PASS1, PASS2)]
        if stray:
            raise S.SpecError(f"{spec.where}: a norm or rms reads a value of the last pass ({stray[0]})")

    def stored_by(self, symbol: sp.Symbol, before: int) -> Array | None:
        array = self.stores.get(symbol)
        return array if array is not None and self.passes[symbol] < before else None

    def gather(self, roots: list[sp.Symbol], at: int):
        """(assignments, loads, matrix means read) a pass at `at` needs to compute `roots`."""
        overwritten = {a.symbol for v, a in self.stores.items() if self.passes[v] < at}
        array_of = {a.symbol: a for a in self.arrays}
        mean_symbols = {m.symbol: kind for kind, ms in self.means.items() for m in ms}
        body, loads, matrix, seen = [], [], [], set()

        def need(symbol: sp.Symbol) -> None:
            if symbol in seen:
                return
            seen.add(symbol)
            stored = self.stored_by(symbol, at)
            if stored is not None:
                loads.append(Load(stored, symbol))
            elif symbol in array_of:
                if symbol in overwritten:
                    raise S.SpecError(
                        f"{self.spec.where}: a later pass reads the old value of '{symbol}', which an "
                        "earlier pass has overwritten"
                    )
                loads.append(Load(array_of[symbol], symbol))
            elif symbol in mean_symbols:
                kind = mean_symbols[symbol]
                if kind is S.matrix_mean and at >= PASS2:
                    matrix.append(symbol)
                elif at != LINES:
                    raise S.SpecError(
                        f"{self.spec.where}: '{symbol}' ({kind.__name__}) is read in a later pass"
                    )
            elif symbol in self.defined:
                a = self.defined[symbol]
                body.append(a)
                for s in sorted(a.expr.free_symbols, key=str):
                    need(s)

        for root in roots:
            need(root)
        return schedule(body), loads, sorted(matrix, key=str)

    def element_pass(self, at: int, roots: list[sp.Symbol], stores: list[Store]):
        """(the pass as a Stage, the matrix means it reads, its per-row lines)."""
        body, loads, matrix = self.gather(roots, at)
        per_matrix = [a for a in body if self.spaces.get(a.target) == Space.MATRIX]
        per_row = [a for a in body if self.spaces.get(a.target) == Space.ROW]
        element = [a for a in body if a not in per_matrix and a not in per_row]
        hoisted_rows, element = hoist_rows(element, self.spaces)
        element = prune(eliminate_common_subexpressions(element, "x"), roots)
        row_lines = prune(schedule(per_row + hoisted_rows), _free(element) | set(roots))
        tensor = self.prologue + per_matrix
        tensor = prune(
            eliminate_common_subexpressions(tensor, "y"), _free(element) | _free(row_lines) | set(roots)
        )
        read = _free(element) | _free(tensor) | _free(row_lines) | set(roots)
        loads = [load for load in loads if load.value in read]
        stage = Stage(
            per_tensor=per_tensor_inputs(_free(element) | _free(row_lines), tensor, self.hoisted.levels),
            tensor=tuple(tensor),
            loads=tuple(loads),
            element=tuple(element),
            stores=tuple(stores),
            reductions=self.reductions.get(at, ()),
        )
        return stage, tuple(matrix), tuple(row_lines)

    def line_stage(self, space: Space, kind) -> LineStage:
        stores = [Store(a, v) for v, a in self.stores.items() if SHAPE_SPACE[a.shape] == space]
        roots = [s.value for s in stores]
        if space == Space.ROW:
            roots += [m.expr for m in self.means[S.matrix_mean]]
        body, loads, _ = self.gather(roots, LINES)
        lines = prune(eliminate_common_subexpressions(body, "x"), roots)
        read = _free(lines) | set(roots)
        means = tuple(m for m in self.means[kind] if m.symbol in read)
        return LineStage(means, tuple(ld for ld in loads if ld.value in read), tuple(lines), tuple(stores))

    def kernel(self, variant, guards, values) -> FactoredKernel:
        spec = self.spec
        stores = {k: [] for k in (PASS1, PASS2, PASS3)}
        for value, array in self.stores.items():
            if array.shape == "element":
                stores[self.passes[value]].append(Store(array, value))
        roots = {
            k: [s.value for s in stores[k]] + [r.expr for r in self.reductions.get(k, ())] for k in stores
        }
        roots[PASS1] += [m.expr for m in self.means[S.row_mean] + self.means[S.col_mean]]
        first, m1, r1 = self.element_pass(PASS1, roots[PASS1], stores[PASS1])
        second, m2, r2 = self.element_pass(PASS2, roots[PASS2], stores[PASS2])
        third, m3, r3 = self.element_pass(PASS3, roots[PASS3], stores[PASS3])
        late = self.late
        finalize_outputs = tuple(s for s in third.per_tensor if s in late)
        finalize = (
            prune(eliminate_common_subexpressions(self.hoisted.tensor, "y"), finalize_outputs) if late else []
        )
        stages = (first, second, third)
        row_stage = self.line_stage(Space.ROW, S.row_mean)
        col_stage = self.line_stage(Space.COL, S.col_mean)
        used = _free(finalize) | _free(row_stage.lines) | _free(col_stage.lines) | _free(r1 + r2 + r3)
        for stage in stages:
            used |= _free(stage.element) | _free(stage.tensor)
        return FactoredKernel(
            **step_fields(spec, variant, guards, values, self.hoisted, used),
            arrays=tuple(self.arrays),
            stages=stages,
            finalize=tuple(finalize),
            finalize_outputs=finalize_outputs,
            row_stage=row_stage,
            col_stage=col_stage,
            matrix_means=tuple(self.means[S.matrix_mean]),
            matrix_reads=(m1, m2, m3),
            row_lines=(r1, r2, r3),
        )
