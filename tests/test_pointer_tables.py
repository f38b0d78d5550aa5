"""The pointer-table hand-off: gradients of every kind a step may get, and the tables' rows."""

import ast

import numpy as np
import pytest

import optforge
from optforge.runtime.pointers import BLOCK, pointer_table, set_row


def _gradients(rng, shapes, step):
    """Per shape a gradient, in turn: plain, read-only, Fortran-ordered, a strided view."""
    grads = []
    for i, shape in enumerate(shapes):
        g = rng.standard_normal(shape).astype(np.float32)
        kind = (i + step) % 4
        if kind == 1:
            g.flags.writeable = False
        elif kind == 2:
            g = np.asfortranarray(g)
        elif kind == 3:
            g = np.repeat(g.reshape(-1), 2)[::2].reshape(shape)  # not contiguous
        grads.append(g)
    return grads


def test_a_step_over_many_kinds_of_gradient_equals_the_step_over_plain_copies(rng):
    # More than BLOCK tensors of each kind, so the numba blocks and the Python loop both run.
    shapes = [(5,), (3, 4), (2, 3, 2)] * (2 * BLOCK)
    initial = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    mixed = [optforge.Parameter(w.copy(), f"a{i}") for i, w in enumerate(initial)]
    plain = [optforge.Parameter(w.copy(), f"b{i}") for i, w in enumerate(initial)]
    a, b = optforge.nn.Adam(mixed, learning_rate=0.1), optforge.nn.Adam(plain, learning_rate=0.1)
    for step in range(3):
        grads = _gradients(rng, shapes, step)
        a(tuple(grads))
        b(tuple(np.ascontiguousarray(g).copy() for g in grads))
    for p, q in zip(mixed, plain):
        np.testing.assert_array_equal(p.asnumpy(), q.asnumpy())
    for key, value in a.state_dict().items():
        if key.startswith("state/"):
            np.testing.assert_array_equal(value, b.state_dict()[key])


def test_a_row_points_at_each_array_with_its_own_size():
    arrays = [np.arange(n, dtype=np.float64).reshape(-1, 1) if n % 2 else np.ones(n) for n in range(1, 40)]
    arrays[7].flags.writeable = False
    table = pointer_table([[np.zeros(1)] * len(arrays)])
    set_row(table, 0, arrays)
    assert list(table.addresses[0]) == [a.ctypes.data for a in arrays]
    assert list(table.sizes[0]) == [a.size for a in arrays]


def test_a_row_refuses_memory_it_could_not_index_as_one_run():
    table = pointer_table([[np.zeros(4)] * 2])
    before = table.addresses.copy(), table.sizes.copy()
    with pytest.raises(ValueError, match="C-contiguous"):
        set_row(table, 0, [np.zeros(4), np.zeros((4, 2))[:, 0]])
    np.testing.assert_array_equal(table.addresses, before[0])
    np.testing.assert_array_equal(table.sizes, before[1])


def test_no_jitted_function_is_printed_twice(built_files):
    """Kernels (and stages) that print the same are printed once and shared."""
    seen = {}
    for path, text in built_files.items():
        if not path.startswith(("cpu/", "cuda/")):
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and node.decorator_list:
                body = (path.split("/")[0], ast.dump(node.args), *map(ast.dump, node.body))
                assert body not in seen, f"{path}:{node.name} repeats {seen[body]}"
                seen[body] = f"{path}:{node.name}"
    assert len(seen) > 150
