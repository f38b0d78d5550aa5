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
    # [matrix functions, elements of all tensors]: a matrix stage's scratch matrices
    matrices: np.ndarray
    matrix_shapes: np.ndarray  # int64 [tensors, 3]: each tensor's offset in them, rows, columns
    # [sum rule outputs]: what the sum rules return at a "group" round, which the stages after
    # it read (step-level values, in float64 as the host computed them)
    sum_values: np.ndarray


class StageBuffers:
    """A batch's per-tensor table and scratch, per plan (a variant's branches may differ).
    `shapes`: the tensors' shapes, which a plan with a matrix stage or shapes needs."""

    def __init__(self, dtype: np.dtype, tensors: int, chunks, shapes: list[tuple[int, ...]] | None = None):
        self.dtype, self.tensors, self.chunks = dtype, tensors, chunks
        self.shapes = None if shapes is None else [tuple(s) for s in shapes]
        self._made: dict[Plan, tuple[np.ndarray, Scratch]] = {}

    def get(self, plan: Plan) -> tuple[np.ndarray, Scratch]:
        if plan not in self._made:
            buffers = [np.zeros(shape) for shape in scratch_shapes(plan, self.chunks, self.tensors)]
            per_tensor = np.zeros((plan.per_tensor, self.tensors), self.dtype)
            buffers += matrix_buffers(plan, self.shapes, self.tensors)
            if plan.shapes:
                per_tensor[2:4] = buffers[-1][:, 1:].T  # each matrix's rows and columns
            buffers.append(np.zeros(plan.sum_values))
            self._made[plan] = (per_tensor, Scratch(*buffers))
        return self._made[plan]


def matrix_buffers(plan: Plan, shapes, tensors: int) -> list[np.ndarray]:
    """A plan's scratch matrices (float64: a float32 or float64 value is exact in them) and the
    table of each tensor's offset, rows and columns; empty for a plan without a matrix stage."""
    if not (plan.matrices or plan.shapes):
        return [np.zeros((0, 0)), np.zeros((tensors, 3), np.int64)]
    if shapes is None or len(shapes) != tensors or any(len(s) != 2 for s in shapes):
        raise ValueError(
            "a kernel with a matrix stage steps 2-D tensors, and needs their shapes; got "
            f"{shapes!r} for {tensors} tensors"
        )
    table = np.zeros((tensors, 3), np.int64)
    table[:, 1:] = shapes
    table[1:, 0] = np.cumsum(table[:, 1] * table[:, 2])[:-1]
    return [np.zeros((plan.matrices, int((table[:, 1] * table[:, 2]).sum()))), table]


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
            combine("sums" if kind == "group" else kind, chunks, scratch)
            yield kind, scratch
        stage(chunks, arrays, per_tensor, scratch, *scalars)


def group_totals(sums: list[np.ndarray], columns: tuple[int, ...]) -> np.ndarray:
    """The group sums over every tensor of the step: `columns` of each batch's per-tensor sums
    (optforge.runtime.combine), added over the tensors and then the batches in order (float64,
    so a step's totals do not depend on the thread count)."""
    total = np.zeros(len(columns))
    for table in sums:
        total += table[:, list(columns)].sum(axis=0)
    return total


def fill_sum_values(scratch: Scratch, values) -> None:
    """The sum rules' outputs, for the stages after the "group" round."""
    scratch.sum_values[:] = values


def run_stages(*args, after_sums=None) -> None:
    """`stage_steps` run through, on one process (nothing added between the stages). A plan
    with group sums calls `after_sums(totals)` at its "group" round: the sum rules' outputs
    from the totals over this batch's tensors."""
    branch = args[0]
    for kind, scratch in stage_steps(*args):
        if kind == "group":
            if after_sums is None:
                raise ValueError("a branch with group sums needs `after_sums`: the sum rules")
            fill_sum_values(scratch, after_sums(group_totals([scratch.sums], branch.plan.group_sums)))


def step_arrays(
    branch: Branch,
    dtype,
    chunks,
    arrays: list[list[np.ndarray]],
    weight_decay,
    grad_scale,
    scalars,
    after_sums=None,
):
    """One step of `branch` over `arrays` (per array argument, one array per tensor), as a
    batch steps its tensors: for callers that hold the arrays themselves (tests, benchmarks);
    `after_sums` as `run_stages` takes it."""
    dtype = np.dtype(dtype)
    # The arrays themselves, not `reshape(-1)` of them: that would silently copy one that is
    # not C-contiguous, and the table would point at the copy, freed as soon as it was made.
    # A table takes C-contiguous arrays of any shape (their addresses and sizes) and refuses others.
    table = pointer_table([list(row) for row in arrays])
    buffers = StageBuffers(dtype, len(arrays[0]), chunks, [np.shape(a) for a in arrays[0]])
    run_stages(
        branch, dtype.name, chunks, table, buffers, weight_decay, grad_scale, scalars, after_sums=after_sums
    )
