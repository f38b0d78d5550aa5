"""The chunk table of a factored kernel: tensors as stacks of matrices, chunks as row ranges.

A tensor of shape (..., rows, cols) is `prod(...)` matrices of rows x cols
(a 2-D one is one matrix). Its row-shaped state holds `matrices * rows`
values (row `r` of matrix `b` at `b * rows + r`), its column-shaped state
`matrices * cols`. A chunk is a range of rows of one matrix, about `chunk`
elements but at least `chunk // 1024` rows (64 by default), so threads share
large matrices; the columns' sums of a chunk go to its own slice of a
scratch buffer (`chunk_cols`), added per matrix in chunk order into the
matrix's own slice of a second one (`matrix_cols`), so a step's bits do not
depend on the thread count. An empty tensor gets no matrix and no chunk: it is
not stepped and its state keeps its initial value; except a tensor whose rows are
split across ranks (`split_rows`), whose matrix this rank holds no row of: its
matrix stays (without chunks), since its column factor is every rank's to update
from the column sums of all of them. The row minimum keeps that buffer
small for wide matrices: 8 bytes per column and chunk is at most 1/8 byte
per element (a 10,000-column matrix in chunks of 6 rows would need 1.3).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np


class FactoredTable(NamedTuple):
    chunk_tensor: np.ndarray  # per chunk: its tensor
    chunk_matrix: np.ndarray  # its matrix (over all tensors)
    chunk_row0: np.ndarray  # its rows, within the matrix
    chunk_row1: np.ndarray
    chunk_cols: np.ndarray  # offset of its column sums in a buffer of `total_cols`
    matrix_tensor: np.ndarray  # per matrix: its tensor
    matrix_index: np.ndarray  # its index within the tensor
    matrix_chunk0: np.ndarray  # its chunks
    matrix_chunk1: np.ndarray
    matrix_rows: np.ndarray  # offset of its row sums in a buffer of `total_rows`
    matrix_cols: np.ndarray  # offset of its column sums in a buffer of `total_matrix_cols`
    tensor_rows: np.ndarray  # per tensor: rows and columns of its matrices, and its size
    tensor_cols: np.ndarray
    tensor_sizes: np.ndarray
    total_rows: int
    total_cols: int
    total_matrix_cols: int


def factored_shape(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(matrices, rows, cols) of a tensor of two or more dimensions."""
    return math.prod(shape[:-2]), shape[-2], shape[-1]


def row_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of a row-shaped state: torch's Adafactor `row_var`."""
    return (*shape[:-1], 1)


def col_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of a column-shaped state: torch's Adafactor `col_var`."""
    return (*shape[:-2], 1, shape[-1])


STATE_SHAPES = {"element": lambda shape: shape, "row": row_shape, "col": col_shape}


def factored_table(shapes: list[tuple[int, ...]], chunk: int, split_rows=None) -> FactoredTable:
    """The table of tensors of `shapes`; `split_rows[t]` says that tensor `t` is one rank's
    rows of a larger matrix (then it keeps its matrix even when it has no row here)."""
    chunks: list[tuple[int, int, int, int, int]] = []
    matrices: list[tuple[int, int, int, int, int, int]] = []
    total_rows = total_cols = total_matrix_cols = 0
    for tensor, shape in enumerate(shapes):
        count, rows, cols = factored_shape(shape)
        shared = split_rows is not None and split_rows[tensor] and count * cols > 0
        if count * rows * cols == 0 and not shared:
            # An empty tensor has no matrix at all: a matrix without rows (or chunks) would
            # have its column means divided by zero.
            continue
        step = max(1, chunk // max(cols, 1), chunk // 1024)
        for index in range(count):
            first = len(chunks)
            for row in range(0, rows, step):
                chunks.append((tensor, len(matrices), row, min(row + step, rows), total_cols))
                total_cols += cols
            matrices.append((tensor, index, first, len(chunks), total_rows, total_matrix_cols))
            total_rows += rows
            total_matrix_cols += cols

    def columns(rows: list[tuple], width: int) -> list[np.ndarray]:
        table = np.array(rows, dtype=np.int64).reshape(len(rows), width)
        return [np.ascontiguousarray(table[:, i]) for i in range(width)]

    dims = [factored_shape(s) for s in shapes]
    return FactoredTable(
        *columns(chunks, 5),
        *columns(matrices, 6),
        np.array([r for _, r, _ in dims], dtype=np.int64),
        np.array([c for _, _, c in dims], dtype=np.int64),
        np.array([math.prod(s) for s in shapes], dtype=np.int64),
        total_rows,
        total_cols,
        total_matrix_cols,
    )
