"""Device-side run-time: device arrays, launches, and batches of tensors per launch.

Imported only when a parameter lives on a CUDA device, so numba-cuda (the
`cuda` extra) is needed only then. Set NUMBA_ENABLE_CUDASIM=1 before numba
is imported to run everything on the Numba CUDA simulator.
"""

from __future__ import annotations

import math

import numpy as np
from numba import config, cuda

from optforge.runtime.chunks import chunk_table
from optforge.runtime.factored import factored_table


def is_device_array(x) -> bool:
    """A numba device array (the simulator's too) or anything with `__cuda_array_interface__`."""
    return cuda.is_cuda_array(x) if hasattr(cuda, "is_cuda_array") else hasattr(x, "copy_to_host")


def as_device_array(x):
    """A numba device array viewing `x` (no copy), e.g. for a torch CUDA tensor."""
    if hasattr(x, "copy_to_host"):
        return x
    return cuda.as_cuda_array(x)


def to_device(x, stream=0):
    return x if is_device_array(x) else cuda.to_device(np.ascontiguousarray(x), stream=stream)


class Launch:
    """Where kernels run: the grid size rule, a stream, and scratch buffers kept between steps."""

    def __init__(self, stream=0):
        self.stream = stream
        self._buffers: dict = {}
        if config.ENABLE_CUDASIM:
            self.max_blocks = 4  # the simulator runs threads in Python: keep grids small
        else:
            device = cuda.get_current_device()
            self.max_blocks = device.MULTIPROCESSOR_COUNT * 8

    def grid(self, work: int, threads: int) -> tuple:
        """(blocks, threads, stream) for `work` independent pieces (chunks, rows, tensors)."""
        return (max(1, min(work, self.max_blocks)), threads, self.stream)

    def buffer(self, name: str, shape: tuple, dtype) -> object:
        """A device array for scratch use, allocated once per (name, shape, dtype)."""
        key = (name, tuple(shape), np.dtype(dtype).str)
        if key not in self._buffers:
            self._buffers[key] = cuda.device_array(shape, dtype=dtype, stream=self.stream)
        return self._buffers[key]


class DeviceLaunchGroup:
    """Up to SLOTS tensors updated by one launch: their arrays as padded tuples, a device chunk
    table (ChunkTable, or a FactoredTable for a factored variant), and the buffers its stages
    share, made once per plan."""

    def __init__(
        self,
        positions: list[int],
        shapes: list[tuple],
        slots: int,
        chunk: int,
        dummy,
        factored=False,
        shards=None,
    ):
        self.positions = positions  # positions within the batch
        self.slots = slots
        self.dummy = dummy  # fills unused slots (never indexed by the chunk table)
        self.shards = shards  # its tensors split across ranks (optforge.runtime.shards.BatchShards)
        rows = None if shards is None else list(shards.rows)
        table = (
            factored_table(shapes, chunk, split_rows=rows)
            if factored
            else chunk_table([math.prod(s) for s in shapes], chunk)
        )
        self.host_chunks = table
        self.chunks = type(table)(*(cuda.to_device(x) if isinstance(x, np.ndarray) else x for x in table))
        self.n_chunks = table[0].size
        self.n_matrices = table.matrix_tensor.size if factored else 0  # the "matrices" grid
        self._buffers: dict = {}
        self._per_tensor_values: dict = {}

    def tuple_of(self, arrays: list) -> tuple:
        return tuple(arrays) + (self.dummy,) * (self.slots - len(arrays))

    def buffers(self, plan, dtype, weight_decay: np.ndarray, grad_scale: np.ndarray, stream) -> tuple:
        """(per_tensor, scratch) on the device for `plan`: weight decay and gradient scale of
        this group's tensors in the per-tensor table's first rows (copied only when they
        change), the rest written by the stages."""
        from optforge.runtime.launch import Scratch, scratch_shapes

        if plan not in self._buffers:
            shapes = scratch_shapes(plan, self.host_chunks, self.slots)
            # No matrix stage runs on the device (a spec of matrices refuses device parameters):
            # its scratch matrices are empty.
            scratch = Scratch(
                *(cuda.device_array(shape, np.float64, stream=stream) for shape in shapes),
                cuda.device_array((0, 0), np.float64, stream=stream),
                cuda.device_array((0, 3), np.int64, stream=stream),
                cuda.device_array((0,), np.float64, stream=stream),  # (no group sums on the device)
            )
            per_tensor = cuda.device_array((plan.per_tensor, self.slots), dtype, stream=stream)
            self._buffers[plan] = (per_tensor, scratch)
        per_tensor, scratch = self._buffers[plan]
        values = np.zeros((2, self.slots), dtype)
        values[0, : len(self.positions)] = weight_decay[self.positions]
        values[1, : len(self.positions)] = grad_scale[self.positions]
        if self._per_tensor_values.get(plan) is None or not np.array_equal(
            self._per_tensor_values[plan], values
        ):
            per_tensor[:2].copy_to_device(values, stream=stream)
            self._per_tensor_values[plan] = values
        return per_tensor, scratch


def device_stage_steps(
    branch, dtype, launch: Launch, threads: int, chunks, n_chunks, n_matrices, slots, arguments
):
    """Launch a branch's CUDA stages in order on one stream, each on its grid (Branch.grids),
    and before each the combining its plan asks for (optforge.runtime.combine), as a
    generator: it yields (kind, scratch) there, where a caller stepping shards adds the
    other ranks' parts (optforge.runtime.shards)."""
    grids = {
        "chunks": launch.grid(n_chunks, threads),
        "matrices": launch.grid(n_matrices, threads),
        "tensors": launch.grid(1, slots),
    }
    scratch = arguments[2]
    stages = branch.stages[dtype.name]
    for stage, grid, kind in zip(stages, branch.grids, branch.plan.combine or ("",) * len(stages)):
        if kind == "sums":
            sums = _factored_sums if hasattr(chunks, "total_rows") else _flat_sums
            sums[grids["tensors"]](chunks, scratch.partials, scratch.sums)
        elif kind == "columns":
            _matrix_columns[grids["matrices"]](chunks, scratch.col_sums, scratch.columns, scratch.matrix_rows)
        if kind:
            yield kind, scratch
        stage[grids[grid]](chunks, *arguments)


def run_device_stages(*args) -> None:
    """`device_stage_steps` run through, on one process."""
    for _ in device_stage_steps(*args):
        pass


# optforge.runtime.combine's functions on the device: a thread per tensor adds its chunks'
# partial sums in chunk order; a block per matrix, a thread per column, its chunks' column sums.
@cuda.jit
def _flat_sums(chunks, partials, sums):
    tensor = cuda.grid(1)
    if tensor < sums.shape[0]:
        n = partials.shape[1]
        for k in range(n + 1):
            sums[tensor, k] = 0.0
        for chunk in range(chunks.tensor.shape[0]):
            if chunks.tensor[chunk] == tensor:
                for k in range(n):
                    sums[tensor, k] += partials[chunk, k]
                sums[tensor, n] += chunks.stop[chunk] - chunks.start[chunk]


@cuda.jit
def _factored_sums(table, partials, sums):
    tensor = cuda.grid(1)
    if tensor < sums.shape[0]:
        n = partials.shape[1]
        for k in range(n + 1):
            sums[tensor, k] = 0.0
        for chunk in range(table.chunk_tensor.shape[0]):
            if table.chunk_tensor[chunk] == tensor:
                for k in range(n):
                    sums[tensor, k] += partials[chunk, k]
                rows = table.chunk_row1[chunk] - table.chunk_row0[chunk]
                sums[tensor, n] += rows * table.tensor_cols[tensor]


@cuda.jit
def _matrix_columns(table, col_sums, columns, matrix_rows):
    for matrix in range(cuda.blockIdx.x, table.matrix_tensor.shape[0], cuda.gridDim.x):
        cols = table.tensor_cols[table.matrix_tensor[matrix]]
        base = table.matrix_cols[matrix]
        for col in range(cuda.threadIdx.x, cols, cuda.blockDim.x):
            for k in range(col_sums.shape[0]):
                total = 0.0
                for chunk in range(table.matrix_chunk0[matrix], table.matrix_chunk1[matrix]):
                    total += col_sums[k, table.chunk_cols[chunk] + col]
                columns[k, base + col] = total
        if cuda.threadIdx.x == 0:
            rows = 0
            for chunk in range(table.matrix_chunk0[matrix], table.matrix_chunk1[matrix]):
                rows += table.chunk_row1[chunk] - table.chunk_row0[chunk]
            matrix_rows[matrix] = rows


@cuda.jit
def _scatter_rows(rows, values, row_len, out):
    """out[rows[r], :] = values[r, :] for unique rows (flat arrays); out was zeroed."""
    for r in range(cuda.blockIdx.x, rows.shape[0], cuda.gridDim.x):
        for k in range(cuda.threadIdx.x, row_len, cuda.blockDim.x):
            out[rows[r] * row_len + k] = values[r * row_len + k]


def dense_from_rows(rows: np.ndarray, values: np.ndarray, shape, dtype, launch: Launch):
    """A zeroed device array of `shape` with the given unique rows filled in, on the device."""
    out = cuda.to_device(np.zeros(int(np.prod(shape)), dtype=dtype), stream=launch.stream)
    if rows.size:
        row_len = values.size // rows.size
        _scatter_rows[launch.grid(rows.size, 32)](
            cuda.to_device(rows, stream=launch.stream),
            cuda.to_device(values.reshape(-1), stream=launch.stream),
            row_len,
            out,
        )
    return out


_NONFINITE_KERNEL = None


def device_all_finite(x) -> bool:
    """Whether every element of a device array is finite (one flag set by any thread that finds one)."""
    global _NONFINITE_KERNEL
    if _NONFINITE_KERNEL is None:

        @cuda.jit
        def flag_nonfinite(values, flag):
            i = cuda.grid(1)
            while i < values.size:
                if not math.isfinite(values[i]):
                    flag[0] = 1  # every writer writes 1: the race is harmless
                i += cuda.gridsize(1)

        _NONFINITE_KERNEL = flag_nonfinite
    flat = as_device_array(x).reshape(-1)
    flag = cuda.to_device(np.zeros(1, np.int32))
    blocks = max(1, min(1024, (flat.size + 255) // 256))
    _NONFINITE_KERNEL[blocks, 256](flat, flag)
    return int(flag.copy_to_host()[0]) == 0
