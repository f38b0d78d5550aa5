"""Are all of a step's gradients finite? For `skip_nonfinite=True` (loss-scaling training).

One read of each gradient, no temporary array: a parallel Numba count for host
arrays (one call for a whole batch, over its pointer table's gradient row), a
grid-stride CUDA kernel for device arrays (imported only then).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from optforge.runtime.pointers import view
from optforge.runtime.row_tensor import RowTensor


@numba.njit(parallel=True, cache=True)
def _count_nonfinite(x):
    count = 0
    for i in numba.prange(x.size):
        if not math.isfinite(x[i]):
            count += 1
    return count


def all_finite(gradients) -> bool:
    for g in gradients:
        values = g.values if isinstance(g, RowTensor) else g
        if isinstance(values, np.ndarray):
            if values.size and _count_nonfinite(values.reshape(-1)):
                return False
        else:
            from optforge.runtime.cuda import device_all_finite

            if not device_all_finite(values):
                return False
    return True


def _table_counter(F):
    @numba.njit(parallel=True, cache=True)
    def count_nonfinite(chunks, arrays, row):
        count = 0
        for chunk in numba.prange(chunks.tensor.shape[0]):
            x = view(arrays, row, chunks.tensor[chunk], F)[chunks.start[chunk] : chunks.stop[chunk]]
            found = 0
            for i in range(x.shape[0]):
                if not math.isfinite(x[i]):
                    found += 1
            count += found
        return count

    return count_nonfinite


_TABLE_COUNTERS = {"float32": _table_counter(np.float32), "float64": _table_counter(np.float64)}


def table_finite(chunks, arrays, row: int, dtype: np.dtype) -> bool:
    """Whether every element of row `row` of the pointer table `arrays` is finite, over the
    flat chunk table `chunks` of its tensors: one parallel call for the whole row."""
    return chunks.tensor.size == 0 or _TABLE_COUNTERS[np.dtype(dtype).name](chunks, arrays, row) == 0
