"""Running a branch's stages on the CPU: the buffers they share, and the calls in order.

Every generated stage is called the same way,
``stage(chunks, arrays, per_tensor, scratch, *scalars)``, so the run-time needs no
generated driver: a branch's `Plan` says how large the shared buffers are and which
sums are combined between which stages (optforge.runtime.combine), and its stages
run one after the other over them. The buffers of a batch are made once and
reused every step (a fresh buffer would fault its pages in every step).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from optforge.runtime.combine import combine
from optforge.runtime.kernels import Branch, Plan
from optforge.runtime.pointers import PointerTable, pointer_table


class Scratch(NamedTuple):
    """What stages hand each other besides the per-tensor values (all written before read),
    all float64: what the stages write, and what the run-time combines from it between
    them (optforge.runtime.combine)."""

    partials: np.ndarray  # [chunks, reductions]: each chunk's partial sums
    row_sums: np.ndarray  # [row sums, total rows]: a factored kernel's per-row sums
    col_sums: np.ndarray  # [column sums, total columns]: per chunk, its columns' sums
    sums: np.ndarray  # [tensors, reductions + 1]: per tensor, its sums and its element count
    columns: np.ndarray  # [column sums, total matrix columns]: per matrix, its columns' sums
    matrix_rows: np.ndarray  # [matrices]: per matrix, its rows
    matrix_sums: np.ndarray  # [matrix means, matrices]: per matrix, the sums over its rows


class StageBuffers:
    """A batch's per-tensor table and scratch, per plan (a variant's branches may differ)."""

    def __init__(self, dtype: np.dtype, tensors: int, chunks):
        self.dtype, self.tensors, self.chunks = dtype, tensors, chunks
        self._made: dict[Plan, tuple[np.ndarray, Scratch]] = {}

    def get(self, plan: Plan) -> tuple[np.ndarray, Scratch]:
        if plan not in self._made:
            scratch = Scratch(*(np.zeros(shape) for shape in scratch_shapes(plan, self.chunks, self.tensors)))
            self._made[plan] = (np.zeros((plan.per_tensor, self.tensors), self.dtype), scratch)
        return self._made[plan]


def scratch_shapes(plan: Plan, chunks, tensors: int) -> list[tuple[int, ...]]:
    """The shapes of a plan's Scratch buffers over a chunk table of `tensors` tensors (a
    factored kernel's FactoredTable has its totals)."""
    factored = hasattr(chunks, "total_rows")
    matrices = chunks.matrix_tensor.shape[0] if factored else 0
    return [
        (chunks[0].shape[0], plan.reductions),
        (plan.row_sums, chunks.total_rows if factored else 0),
        (plan.col_sums, chunks.total_cols if factored else 0),
        (tensors, plan.reductions + 1),
        (plan.col_sums, chunks.total_matrix_cols if factored else 0),
        (matrices,),
        (plan.matrix_means, matrices),
    ]


def stage_steps(
    branch: Branch,
    key,
    chunks,
    arrays: PointerTable,
    buffers: StageBuffers,
    weight_decay: np.ndarray,
    grad_scale: np.ndarray,
    scalars,
):
    """One step of a batch, as a generator: `weight_decay` and `grad_scale` per tensor, then
    every stage of `branch` compiled for `key` (a dtype name, or the batch's Precision: see
    per_dtype). Before a stage that reads combined sums (Plan.combine) it combines them and
    yields (kind, scratch): a caller stepping shards adds the other ranks' parts there."""
    per_tensor, scratch = buffers.get(branch.plan)
    per_tensor[0] = weight_decay
    per_tensor[1] = grad_scale
    stages = branch.stages[key]
    for stage, kind in zip(stages, branch.plan.combine or ("",) * len(stages)):
        if kind:
            combine(kind, chunks, scratch)
            yield kind, scratch
        stage(chunks, arrays, per_tensor, scratch, *scalars)


def run_stages(*args) -> None:
    """`stage_steps` run through, on one process (nothing added between the stages)."""
    for _ in stage_steps(*args):
        pass


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
