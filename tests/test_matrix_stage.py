"""The matrix stage: matrix functions in the spec language, planned between element stages."""

import numpy as np
import pytest
import sympy as sp

from optforge.compiler.ir import MATRIX, PASS1, PASS3, Assignment, Space
from optforge.compiler.lower import lower
from optforge.compiler.passes.matrix import extract_matrix_functions
from optforge.compiler.spec import (
    NewtonSchulz,
    Rule,
    Spec,
    SpecError,
    State,
    g,
    lr,
    ncols,
    newton_schulz,
    norm,
    nrows,
    rounded_sub,
    w,
)
from optforge.runtime.chunks import chunk_table
from optforge.runtime.kernels import Plan
from optforge.runtime.launch import StageBuffers

m, u, o, k = sp.symbols("m u o k")


def _spec(rules, **fields):
    fields.setdefault("tensor_rank", 2)
    return Spec(
        name="tiny",
        title="Tiny",
        source="specs/tiny.py",
        hypers=(),
        flags=(),
        state=(State(m, 0, "buf", "A buffer."),),
        rules=tuple(rules),
        decay="decoupled",
        **fields,
    )


RULES = [Rule(m, m + g), Rule(u, 2 * m), Rule(o, newton_schulz(u, (3, -4, 2), 5, 1e-7)), Rule(w, w - lr * o)]


def test_extract_names_argument_and_scratch():
    assignments = [Assignment(u, 2 * m), Assignment(o, NewtonSchulz(u, 3, -4, 2, 5, 1e-7))]
    rewritten, found = extract_matrix_functions(assignments)
    assert [str(a) for a in rewritten] == ["u = 2*m", "matrix0_of = u"]
    assert found[0].symbol == o and found[0].argument.name == "matrix0_of"
    assert found[0].array.shape == "scratch" and found[0].function is NewtonSchulz


def test_plan_stores_matrix_then_reads_result():
    (kernel,) = lower(_spec(RULES), {})
    phases = [(r.space, r.phase) for r in kernel.regions if r.body or r.loads or r.stores]
    assert (Space.TENSOR, MATRIX) in phases
    first = kernel.region(Space.ELEMENT, PASS1)
    assert any(s.array.shape == "scratch" for s in first.stores)  # the argument, into the scratch
    matrix = kernel.region(Space.TENSOR, MATRIX)
    assert isinstance(matrix.body[0].expr, NewtonSchulz) and matrix.stores[0].value == o
    last = kernel.region(Space.ELEMENT, PASS3)
    assert any(ld.value == o and ld.array.shape == "scratch" for ld in last.loads)
    assert [s.array.name for s in last.stores] == ["param"]


def test_shape_symbols_are_per_tensor():
    rules = RULES[:3] + [Rule(w, w - lr * sp.sqrt(nrows / ncols) * o)]
    (kernel,) = lower(_spec(rules), {})
    assert nrows not in kernel.scalars  # read per tensor, not a step-level scalar


@pytest.mark.parametrize(
    "rules, message",
    [
        (RULES[:2] + [Rule(o, 1 + newton_schulz(u, (3, -4, 2), 5, 1e-7))] + RULES[3:], "whole expression"),
        (
            RULES[:2]
            + [Rule(o, newton_schulz(newton_schulz(u, (3, -4, 2), 5, 1e-7), (3, -4, 2), 5, 1e-7))]
            + RULES[3:],
            "matrix function of a matrix function",
        ),
        (RULES[:2] + [Rule(o, newton_schulz(lr, (3, -4, 2), 5, 1e-7))] + RULES[3:], "does not vary"),
        (RULES[:2] + [Rule(o, newton_schulz(u * norm(g), (3, -4, 2), 5, 1e-7))] + RULES[3:], "reduction"),
        (RULES[:2] + [Rule(o, newton_schulz(u, (3, -4, 2), g, 1e-7))] + RULES[3:], "parameter"),
    ],
)
def test_misuse_is_a_spec_error(rules, message):
    with pytest.raises(SpecError, match=message):
        _spec(rules)


def test_matrix_function_needs_a_spec_of_matrices():
    with pytest.raises(SpecError, match="tensor_rank=2"):
        _spec(RULES, tensor_rank=None)
    with pytest.raises(SpecError, match="nrows"):  # not a symbol of a spec of any tensors
        _spec([Rule(m, m + g), Rule(w, w - lr * nrows * m)], tensor_rank=None)


def test_norm_of_a_matrix_result_is_refused():
    rules = RULES[:3] + [Rule(k, norm(o)), Rule(w, w - lr * k * o)]
    with pytest.raises(SpecError):
        lower(_spec(rules), {})


def test_stage_buffers_lay_out_matrices_and_shapes():
    plan = Plan(per_tensor=4, matrices=1, shapes=True)
    chunks = chunk_table([15, 8], 1 << 16)
    buffers = StageBuffers(np.dtype(np.float32), 2, chunks, [(3, 5), (4, 2)])
    per_tensor, scratch = buffers.get(plan)
    assert scratch.matrices.shape == (1, 23)
    assert scratch.matrix_shapes.tolist() == [[0, 3, 5], [15, 4, 2]]
    assert per_tensor[2].tolist() == [3, 4] and per_tensor[3].tolist() == [5, 2]
    with pytest.raises(ValueError, match="2-D"):
        StageBuffers(np.dtype(np.float32), 1, chunk_table([7], 1 << 16), [(7,)]).get(plan)


def test_rounded_sub_stays_in_the_element_code():
    """`1 - weight` of torch's lerp in the kernel's type: its operand hoisted, not the subtraction."""
    rules = [Rule(m, m + g), Rule(w, w - m * rounded_sub(1, 1 - lr))]
    (kernel,) = lower(_spec(rules, tensor_rank=None), {})
    body = [str(a) for r in kernel.regions for a in r.body]
    assert any("rounded_sub(1, s" in line for line in body), body
    assert [str(a.expr) for a in kernel.host] == ["1 - lr"]


def test_rounded_sub_outside_the_element_code_is_refused():
    rules = [Rule(k, rounded_sub(1, lr)), Rule(m, m + g), Rule(w, w - k * m)]
    with pytest.raises(SpecError, match="rounded_sub"):
        lower(_spec(rules, tensor_rank=None), {})
