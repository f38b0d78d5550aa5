"""`RowTensor`: a gradient that is non-zero only in some rows (an embedding's, say)."""

from __future__ import annotations

import numpy as np


class RowTensor:
    """Rows `indices` of a dense tensor of shape `dense_shape` hold `values`; the rest are 0.

    An index may appear more than once: its rows of `values` add up.
    """

    __slots__ = ("indices", "values", "dense_shape")

    def __init__(self, indices, values, dense_shape):
        if isinstance(values, np.ma.MaskedArray) or isinstance(indices, np.ma.MaskedArray):
            raise TypeError(
                "For 'RowTensor', the indices and values must not be masked arrays: the mask would be "
                "ignored. Pass values.filled(0) or only the rows that have a gradient."
            )
        indices = np.asarray(indices)
        values = np.asarray(values)
        dense_shape = tuple(int(d) for d in dense_shape)
        if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
            raise TypeError(
                f"For 'RowTensor', the 'indices' must be a 1-D integer array, but got "
                f"{indices.ndim}-D {indices.dtype}."
            )
        if len(dense_shape) < 1 or values.shape != (indices.shape[0], *dense_shape[1:]):
            raise ValueError(
                f"For 'RowTensor', the 'values' must have shape {(indices.shape[0], *dense_shape[1:])} "
                f"(one row per index, rows of the dense shape {dense_shape}), but got {values.shape}."
            )
        self.indices = indices.astype(np.int64)
        self.values = values
        self.dense_shape = dense_shape

    @property
    def dtype(self) -> np.dtype:
        return self.values.dtype

    def to_dense(self) -> np.ndarray:
        dense = np.zeros(self.dense_shape, dtype=self.values.dtype)
        np.add.at(dense, self.indices, self.values)
        return dense

    def __repr__(self) -> str:
        return f"RowTensor(rows={self.indices.size}, dense_shape={self.dense_shape}, dtype={self.dtype})"
