"""What the run-time adds up between a branch's stages: the sums its chunks wrote.

A stage that reduces writes one partial sum per chunk (a factored kernel's first
pass also writes, per chunk, its columns' sums); the stage after it reads one per
tensor (per matrix). They are added here, in chunk order, so a step's bits do not
depend on the thread count. This is also the one place where the sums of a tensor
split across ranks hold this rank's part only: optforge.runtime.shards adds the
other ranks' parts to the combined buffers before the next stage reads them.

Every combined buffer carries its own count (a tensor's elements, a matrix's rows),
added up with its sums, so a mean divides by all the ranks' count.
"""

from __future__ import annotations

import numba


@numba.njit(cache=True)
def flat_sums(chunks, partials, sums):
    """sums[t, :-1]: tensor t's partial sums over its chunks; sums[t, -1]: its elements."""
    sums[:] = 0.0
    n = partials.shape[1]
    for chunk in range(chunks.tensor.shape[0]):
        tensor = chunks.tensor[chunk]
        for k in range(n):
            sums[tensor, k] += partials[chunk, k]
        sums[tensor, n] += chunks.stop[chunk] - chunks.start[chunk]


@numba.njit(cache=True)
def factored_sums(table, partials, sums):
    """`flat_sums` over a FactoredTable's chunks (row ranges of one matrix)."""
    sums[:] = 0.0
    n = partials.shape[1]
    for chunk in range(table.chunk_tensor.shape[0]):
        tensor = table.chunk_tensor[chunk]
        for k in range(n):
            sums[tensor, k] += partials[chunk, k]
        sums[tensor, n] += (table.chunk_row1[chunk] - table.chunk_row0[chunk]) * table.tensor_cols[tensor]


@numba.njit(parallel=True, cache=True)
def matrix_columns(table, col_sums, columns, matrix_rows):
    """columns[k, matrix_cols[m] + c]: column c's k-th sum over matrix m's chunks;
    matrix_rows[m]: its rows (a matrix of a split tensor may have none on this rank)."""
    for matrix in numba.prange(table.matrix_tensor.shape[0]):
        cols = table.tensor_cols[table.matrix_tensor[matrix]]
        base = table.matrix_cols[matrix]
        columns[:, base : base + cols] = 0.0
        rows = 0
        for chunk in range(table.matrix_chunk0[matrix], table.matrix_chunk1[matrix]):
            part = table.chunk_cols[chunk]
            for k in range(col_sums.shape[0]):
                for col in range(cols):
                    columns[k, base + col] += col_sums[k, part + col]
            rows += table.chunk_row1[chunk] - table.chunk_row0[chunk]
        matrix_rows[matrix] = rows


def combine(kind: str, chunks, scratch) -> None:
    """Fill the buffers of `kind` (Plan.combine) in `scratch` from what the last stage wrote."""
    factored = hasattr(chunks, "total_rows")
    if kind == "sums":
        (factored_sums if factored else flat_sums)(chunks, scratch.partials, scratch.sums)
    elif kind == "columns":
        matrix_columns(chunks, scratch.col_sums, scratch.columns, scratch.matrix_rows)
    # "matrices": the line stage wrote one sum per matrix; nothing to add on one rank.
