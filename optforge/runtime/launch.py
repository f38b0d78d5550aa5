"""Running a branch's stages on the CPU: the buffers they share, and the calls in order.

Every generated stage is called the same way,
``stage(chunks, arrays, per_tensor, scratch, *scalars)``, so the run-time needs no
generated driver: a branch's `Plan` says how large the shared buffers are, and its
stages run one after the other over them. The buffers of a batch are made once and
reused every step (a fresh buffer would fault its pages in every step).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from optforge.runtime.kernels import Branch, Plan
from optforge.runtime.pointers import PointerTable, pointer_table


class Scratch(NamedTuple):
    """What stages hand each other besides the per-tensor values (all written before read)."""

    partials: np.ndarray  # float64[chunks, reductions]: each chunk's partial sums
    row_sums: np.ndarray  # float64[row sums, total rows]: a factored kernel's per-row sums
    col_sums: np.ndarray  # float64[column sums, total columns]: per chunk, its columns' sums
    per_matrix: np.ndarray  # dtype[matrix means, matrices]


class StageBuffers:
    """A batch's per-tensor table and scratch, per plan (a variant's branches may differ)."""

    def __init__(self, dtype: np.dtype, tensors: int, chunks):
        self.dtype, self.tensors, self.chunks = dtype, tensors, chunks
        self._made: dict[Plan, tuple[np.ndarray, Scratch]] = {}

    def get(self, plan: Plan) -> tuple[np.ndarray, Scratch]:
        if plan not in self._made:
            self._made[plan] = (np.zeros((plan.per_tensor, self.tensors), self.dtype), self._scratch(plan))
        return self._made[plan]

    def _scratch(self, plan: Plan) -> Scratch:
        sums, matrix = scratch_shapes(plan, self.chunks)
        return Scratch(*(np.zeros(shape) for shape in sums), np.zeros(matrix, self.dtype))


def scratch_shapes(plan: Plan, chunks) -> tuple[list[tuple[int, int]], tuple[int, int]]:
    """(the float64 buffers' shapes: partials, row sums, column sums; the per-matrix means'
    shape) of a plan over a chunk table (a factored kernel's FactoredTable has its totals)."""
    factored = hasattr(chunks, "total_rows")
    sums = [
        (chunks[0].shape[0], plan.reductions),
        (plan.row_sums, chunks.total_rows if factored else 0),
        (plan.col_sums, chunks.total_cols if factored else 0),
    ]
    return sums, (plan.matrix_means, chunks.matrix_tensor.shape[0] if factored else 0)


def run_stages(
    branch: Branch,
    key,
    chunks,
    arrays: PointerTable,
    buffers: StageBuffers,
    weight_decay: np.ndarray,
    grad_scale: np.ndarray,
    scalars,
) -> None:
    """One step of a batch: `weight_decay` and `grad_scale` per tensor, then every stage of
    `branch` compiled for `key` (a dtype name, or the batch's Precision: see per_dtype)."""
    per_tensor, scratch = buffers.get(branch.plan)
    per_tensor[0] = weight_decay
    per_tensor[1] = grad_scale
    for stage in branch.stages[key]:
        stage(chunks, arrays, per_tensor, scratch, *scalars)


def step_arrays(
    branch: Branch, dtype, chunks, arrays: list[list[np.ndarray]], weight_decay, grad_scale, scalars
):
    """One step of `branch` over `arrays` (per array argument, one array per tensor), as a
    batch steps its tensors: for callers that hold the arrays themselves (tests, benchmarks)."""
    dtype = np.dtype(dtype)
    # The arrays themselves, not `reshape(-1)` of them: that would silently copy one that is
    # not C-contiguous, and the table would point at the copy, freed as soon as it was made.
    # A table takes C-contiguous arrays of any shape (their addresses and sizes) and refuses others.
    table = pointer_table([list(row) for row in arrays])
    buffers = StageBuffers(dtype, len(arrays[0]), chunks)
    run_stages(branch, dtype.name, chunks, table, buffers, weight_decay, grad_scale, scalars)
