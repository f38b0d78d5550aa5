"""Unit tests of the factored passes (passes/factored.py, passes/schedule.py), their spec checks and
the run-time's factored chunk table."""

import math

import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from optforge.compiler.ir import Assignment, Mean
from optforge.compiler.lower import lower
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
    join,
    space_of,
)
from optforge.compiler.spec import (
    Export,
    Flag,
    Rule,
    Spec,
    SpecError,
    State,
    col_mean,
    g,
    lr,
    matrix_mean,
    rms,
    row_mean,
    w,
)
from optforge.runtime.factored import factored_table
from optforge.specs.adafactor import SPEC as ADAFACTOR
from optforge.specs.adafactor import factored

maximize = next(f.symbol for f in ADAFACTOR.flags if f.name == "maximize")

R, C, v, u, e = sp.symbols("R C v u e")
row_mean0, col_mean0, matrix_mean0 = sp.symbols("row_mean0 col_mean0 matrix_mean0")


def test_a_row_value_times_a_column_value_is_per_element():
    assert join(Space.ROW, Space.COL) == Space.ELEMENT
    assert join(Space.MATRIX, Space.ROW) == Space.ROW
    assert join(Space.SCALAR, Space.COL) == Space.COL
    assert space_of(R * C + lr, {R: Space.ROW, C: Space.COL}) == Space.ELEMENT
    assert space_of(R * lr, {R: Space.ROW}) == Space.ROW


def test_means_become_symbols_with_their_argument_assigned_first():
    assignments = [Assignment(R, R + row_mean(g**2) + row_mean(g**2)), Assignment(C, col_mean(g**2))]
    rewritten, means = extract_means(assignments)
    assert [str(a) for a in rewritten] == [
        "row_mean0_of = g**2",
        "R = R + 2*row_mean0",
        "col_mean0_of = g**2",
        "C = col_mean0",
    ]
    assert means[row_mean] == [Mean(row_mean0, sp.Symbol("row_mean0_of"))]
    assert means[col_mean] == [Mean(col_mean0, sp.Symbol("col_mean0_of"))]
    assert means[matrix_mean] == []


def _passes(assignments, means):
    spaces = {g: Space.ELEMENT, w: Space.ELEMENT, R: Space.ROW, C: Space.COL}
    spaces |= {row_mean0: Space.ROW, col_mean0: Space.COL, matrix_mean0: Space.MATRIX}
    passes = {g: PASS1, w: PASS1, R: LINES, C: LINES, row_mean0: LINES, col_mean0: LINES}
    passes |= {matrix_mean0: PASS2, sp.Symbol("rms0"): FINALIZE}
    return assign_passes(assignments, spaces, passes, means, "specs/tiny.py")


def test_each_value_goes_to_the_first_pass_that_can_compute_it():
    of = sp.Symbol("row_mean0_of")
    assignments = [
        Assignment(of, g**2),
        Assignment(R, R + row_mean0),
        Assignment(e, R * C / matrix_mean0),  # reads the line stage: pass 2
        Assignment(u, g * sp.Symbol("rms0")),  # reads a reduction: pass 3
    ]
    means = {row_mean: [Mean(row_mean0, of)], col_mean: [], matrix_mean: []}
    spaces, passes = _passes(assignments, means)
    assert (spaces[of], passes[of]) == (Space.ELEMENT, PASS1)
    assert (spaces[R], passes[R]) == (Space.ROW, LINES)
    assert (spaces[e], passes[e]) == (Space.ELEMENT, PASS2)
    assert (spaces[u], passes[u]) == (Space.ELEMENT, PASS3)


def test_a_row_mean_of_a_later_value_is_refused():
    of = sp.Symbol("row_mean0_of")
    means = {row_mean: [Mean(row_mean0, of)], col_mean: [], matrix_mean: []}
    with pytest.raises(SpecError, match="argument of a row_mean must be per element and need no mean"):
        _passes([Assignment(of, g * C)], means)


def test_a_row_value_reading_a_reduction_is_refused():
    with pytest.raises(SpecError, match="'R' is per row but reads a value of a later pass"):
        _passes([Assignment(R, R * sp.Symbol("rms0"))], {row_mean: [], col_mean: [], matrix_mean: []})


def test_adafactors_factored_variant_in_three_passes():
    (kernel,) = lower(ADAFACTOR, {maximize: False, factored: True})
    assert kernel.matrices
    first, second, third = [kernel.region(Space.ELEMENT, p) for p in (PASS1, PASS2, PASS3)]
    row_stage, col_stage = kernel.region(Space.ROW, LINES), kernel.region(Space.COL, LINES)
    matrix_reads = tuple(
        tuple(ld.value for ld in kernel.region(Space.MATRIX, p).loads if ld.array.shape == "matrix")
        for p in (PASS1, PASS2, PASS3)
    )
    # Pass 1 reads w (for RMS(w), before the decay) and g; it stores nothing.
    assert [load.array.name for load in first.loads] == ["param", "grad"]
    norms = [r for r in first.reductions if r.space == Space.TENSOR]  # the per-tensor sums
    assert [r.symbol.name for r in norms] == ["rms0"] and norms[0].mean
    assert not first.stores
    # The line stages update the factors from the means of g^2.
    assert [str(a) for a in row_stage.body] == [
        "R_new = R + s0*(-R + row_mean0)",
        "matrix_mean0_of = R_new",
    ]
    assert [str(a) for a in col_stage.body] == ["C_new = C + s0*(-C + col_mean0)"]
    assert [s.array.name for s in row_stage.stores + col_stage.stores] == ["row_var", "col_var"]
    # Pass 2 reads g and the new factors for RMS(U); pass 3 writes w and only w.
    assert {load.array.name for load in second.loads} == {"grad", "row_var", "col_var"}
    assert [r.symbol.name for r in second.reductions] == ["rms1"]
    # Once per row: R/max(eps1, mean of R); per element, the square of U without a square root.
    assert [str(a) for a in kernel.region(Space.ROW, PASS2).body] == ["z0 = R_new/Max(eps1, matrix_mean0)"]
    assert second.reductions[0].squared
    assert "rms1_of = g_eff**2/Max(s1, v_hat)" in [str(a) for a in second.body]
    assert "v_hat = C_new*z0" in [str(a) for a in second.body]
    assert [s.array.name for s in third.stores] == ["param"]
    assert matrix_reads == ((), (matrix_mean0,), (matrix_mean0,))
    finalize = kernel.region(Space.TENSOR, FINALIZE)
    assert [str(a) for a in finalize.body] == ["alpha = rho*Max(eps2, rms0)", "u1 = -alpha/Max(1, rms1/d)"]


def test_the_vector_variant_is_an_ordinary_two_stage_kernel():
    (kernel,) = lower(ADAFACTOR, {maximize: True, factored: False})
    assert not kernel.matrices
    assert [a.name for a in kernel.arrays] == ["param", "grad", "variance"]
    first = kernel.region(Space.ELEMENT, PASS1)
    assert [(r.symbol.name, r.mean) for r in first.reductions] == [("rms0", True), ("rms1", True)]


def _spec(**overrides):
    fields = dict(
        name="tiny",
        title="Tiny",
        source="/somewhere/specs/tiny.py",
        hypers=[],
        flags=[Flag(factored, "matrices", rank=2)],
        state=[State(R, 0, "row", "r", factored, "row"), State(v, 0, "full", "v", ~factored)],
        rules=[
            Rule(R, row_mean(g**2), when=factored),
            Rule(v, g**2, when=~factored),
            Rule(w, w - lr * g / rms(g)),
        ],
        decay="decoupled",
    )
    return Spec(**(fields | overrides))


def test_a_factored_spec_builds():
    spec = _spec()
    assert spec.variants() == [{factored: False}, {factored: True}]


def test_a_row_state_needs_the_rank_flag():
    with pytest.raises(SpecError, match="state 'row': a row-shaped state needs when=<the rank flag>"):
        _spec(state=[State(R, 0, "row", "r", None, "row"), State(v, 0, "full", "v", ~factored)])


def test_a_row_mean_outside_the_factored_variant_is_refused():
    with pytest.raises(SpecError, match=r"row_mean\(g\*\*2\) needs a factored variant"):
        _spec(rules=[Rule(R, g, when=factored), Rule(v, row_mean(g**2), when=~factored), Rule(w, w - lr * g)])


def test_a_rank_flag_needs_a_rank_of_two_or_more():
    with pytest.raises(SpecError, match="a rank flag needs an int rank >= 2"):
        _spec(flags=[Flag(factored, "matrices", rank=1)])


def test_a_rank_flag_is_not_an_argument_and_not_exported_to_nn():
    with pytest.raises(SpecError, match="'factored' is a rank flag, set per tensor: not an argument"):
        _spec(exports=[Export("optim", "Tiny", (("lr", 0.1), "factored"))])
    with pytest.raises(SpecError, match="exports to optim and torch only"):
        _spec(exports=[Export("nn", "Tiny", (("learning_rate", 0.1),))])


def test_what_does_not_vary_along_a_row_is_computed_once_per_row():
    spaces = {C: Space.COL, R: Space.ROW, matrix_mean0: Space.MATRIX, e: Space.ELEMENT, u: Space.ELEMENT}
    rows, rewritten = hoist_rows(
        [Assignment(e, C * R / matrix_mean0 + lr * R), Assignment(u, C * g + R)],
        spaces | {g: Space.ELEMENT},
    )
    assert [str(a) for a in rows] == ["z0 = R/matrix_mean0", "z1 = R*lr"]
    assert [str(a) for a in rewritten] == ["e = C*z0 + z1", "u = C*g + R"]


def test_a_norm_of_a_quotient_by_a_square_root_sums_the_square():
    from optforge.compiler.ir import Reduction
    from optforge.compiler.passes.reductions import summands

    rms0, rms1 = sp.symbols("rms0 rms1")
    values, marked = summands(
        [Assignment(u, g / sp.sqrt(v + 1)), Assignment(e, g + sp.sqrt(v))],
        [Reduction(rms0, u, True), Reduction(rms1, e, True)],
    )
    assert [str(a) for a in values] == ["rms0_of = g**2/(v + 1)", "rms1_of = e"]
    assert [r.squared for r in marked] == [True, False]


@settings(max_examples=60, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(1, 9), min_size=2, max_size=4).map(tuple), min_size=1, max_size=5),
    chunk=st.sampled_from([1, 7, 64, 200, 2048, 5000]),
)
def test_the_factored_table_covers_every_row_once_and_gives_chunks_their_own_column_sums(shapes, chunk):
    table = factored_table(shapes, chunk)
    covered = {}
    for c in range(table.chunk_tensor.size):
        m = table.chunk_matrix[c]
        assert table.matrix_tensor[m] == table.chunk_tensor[c]
        assert table.matrix_chunk0[m] <= c < table.matrix_chunk1[m]  # a matrix's chunks are consecutive
        for row in range(table.chunk_row0[c], table.chunk_row1[c]):
            covered[m, row] = covered.get((m, row), 0) + 1
    expected = {}
    for t, shape in enumerate(shapes):
        count, rows, cols = math.prod(shape[:-2]), shape[-2], shape[-1]
        assert (table.tensor_rows[t], table.tensor_cols[t], table.tensor_sizes[t]) == (
            rows,
            cols,
            math.prod(shape),
        )
        for index in range(count):
            m = next(
                m
                for m in range(table.matrix_tensor.size)
                if (table.matrix_tensor[m], table.matrix_index[m]) == (t, index)
            )
            expected |= {(m, row): 1 for row in range(rows)}
    assert covered == expected
    # Column sums: each chunk its own `cols` slots, none shared; row sums: each matrix its own rows.
    slots = [
        (table.chunk_cols[c], table.tensor_cols[table.chunk_tensor[c]])
        for c in range(table.chunk_tensor.size)
    ]
    assert sum(n for _, n in slots) == table.total_cols
    assert sorted(slots) == [
        (sum(n for _, n in sorted(slots)[:i]), n) for i, (_, n) in enumerate(sorted(slots))
    ]
    assert table.total_rows == sum(math.prod(s[:-1]) for s in shapes)
    # A chunk short of its matrix's end has about `chunk` elements and at least chunk // 1024
    # rows, so wide matrices do not need a column sum per few rows.
    for c in range(table.chunk_tensor.size):
        if c + 1 < table.matrix_chunk1[table.chunk_matrix[c]]:
            cols = table.tensor_cols[table.chunk_tensor[c]]
            assert table.chunk_row1[c] - table.chunk_row0[c] == max(1, chunk // cols, chunk // 1024)


def test_a_wide_matrix_is_cut_into_chunks_of_at_least_chunk_over_1024_rows():
    table = factored_table([(300, 5000)], 1 << 16)  # 13 rows would make a chunk of 65,536 elements
    assert list(table.chunk_row1 - table.chunk_row0) == [64, 64, 64, 64, 44]
    assert table.total_cols == 5 * 5000  # one column sum per chunk and column, not 23 chunks' worth


def test_a_row_means_argument_is_summed_in_pass_1_and_read_by_the_row_lines():
    from optforge.compiler.ir import Reduction

    (kernel,) = lower(_spec(), {factored: True})
    first = kernel.region(Space.ELEMENT, PASS1)
    of = sp.Symbol("row_mean0_of")
    assert "row_mean0_of = g**2" in [str(a) for a in first.body]
    assert Reduction(row_mean0, of, True, False, Space.ROW) in first.reductions
    rows = kernel.region(Space.ROW, LINES)
    assert [str(a) for a in rows.body] == ["R_new = row_mean0"] and [s.array.name for s in rows.stores] == [
        "row"
    ]
    # The update reads rms(g), a per-tensor sum of pass 1: it waits for pass 3, after the finalize.
    assert [s.array.name for s in kernel.region(Space.ELEMENT, PASS3).stores] == ["param"]
    assert not kernel.region(Space.ELEMENT, PASS2).body


def test_a_row_mean_read_per_element_is_refused():
    rules = [
        Rule(R, g, when=factored),
        Rule(v, g**2, when=~factored),
        Rule(w, w - g * row_mean(g**2), when=factored),  # per element: only the line stage has it
        Rule(w, w - g, when=~factored),
    ]
    with pytest.raises(SpecError, match=r"'row_mean0' \(row_mean\) is read in a later pass"):
        lower(_spec(rules=rules), {factored: True})
